"""Local development and test stack: real SecantusDB, Redis and the app processes."""
