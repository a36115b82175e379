"""Reading each partition's backlog from the store and publishing it (``infra/backlog.py``).

The settler observes its own partition after each committed batch (one bounded count
and one index probe for the oldest job); the sweeper observes every partition on its
tick (one aggregate over the queued jobs, which the limit itself keeps bounded).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pymongo.database import Database

from infra import backlog
from ledger.states import JobStatus
from ledger.timeutil import to_ms

QUEUED = JobStatus.QUEUED


def _age(oldest: Any, now: datetime) -> float:
    if not isinstance(oldest, datetime):
        return 0.0
    return max(0.0, (now - to_ms(oldest)).total_seconds())


def depth(db: Database, partition: int, now: datetime) -> tuple[int, float]:
    """(queued jobs up to ``COUNT_CAP``, age of the oldest) of one partition: two index reads."""
    query = {"partition": partition, "status": QUEUED}
    queued = db.jobs.count_documents(query, limit=backlog.COUNT_CAP)
    if queued == 0:
        return 0, 0.0
    oldest = db.jobs.find_one(query, {"createdAt": 1}, sort=[("createdAt", 1), ("_id", 1)])
    return queued, _age(oldest.get("createdAt") if oldest else None, now)


def depths(db: Database, partitions: Iterable[int], now: datetime) -> dict[int, tuple[int, float]]:
    """(queued, oldest age) of every partition in one aggregate; empty partitions are (0, 0)."""
    found: dict[int, tuple[int, float]] = {p: (0, 0.0) for p in partitions}
    pipeline = [{"$match": {"status": QUEUED}},
                {"$group": {"_id": "$partition", "n": {"$sum": 1}, "oldest": {"$min": "$createdAt"}}}]
    for row in db.jobs.aggregate(pipeline):
        found[int(row["_id"])] = (int(row["n"]), _age(row.get("oldest"), now))
    return found


def publish_after_batch(db: Database, redis: Any, partition: int, settled: int, busy_seconds: float) -> backlog.Load:
    """Observe ``partition`` after a committed batch and publish its load (rate updated)."""
    now = datetime.now(UTC)
    queued, oldest_age = depth(db, partition, now)
    load = backlog.after_batch(backlog.read(redis, partition), partition, settled, busy_seconds,
                               queued, oldest_age, time.time())
    backlog.publish(redis, load)
    return load


def publish_all(db: Database, redis: Any, partitions: int, silent_after: float) -> list[backlog.Load]:
    """Observe every partition (the sweeper's tick) and publish each load; the loads."""
    now = datetime.now(UTC)
    counts = depths(db, range(partitions), now)
    previous = backlog.read_all(redis)
    stamp = time.time()
    loads = [backlog.observed(previous.get(p), p, queued, age, stamp, silent_after)
             for p, (queued, age) in sorted(counts.items())]
    backlog.publish(redis, *loads)
    return loads
