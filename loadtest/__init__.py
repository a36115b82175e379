"""Load test (locust) and benchmark (``make bench``) of Purser; see docs/performance.md."""
