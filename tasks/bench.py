"""A no-op task: the benchmark's measure of the queue ceiling (empty tasks/s through Redis)."""

from __future__ import annotations

from workers.celery_app import task


@task(name="bench.noop", ignore_result=True)
def noop(n: int = 0) -> None:
    """Do nothing: the cost measured is Celery's own (fetch, ack-late, dispatch to the pool)."""
    return None
