"""The operator console's overview: the last hour of Purser, read from its own documents.

Every figure is a bounded query on an existing index, never a scan of a collection:

- settled operations per minute by kind, failures by code and settle latency come
  from the terminal jobs of each partition on ``jobs.partition_queue``
  (``partition, status, createdAt``): one range per partition and terminal status,
  newest first, at most :data:`JOBS_PER_RANGE` documents each (``truncated`` says
  when a range had more). A job is counted in the minute it was decided
  (``settledAt``); the range starts :data:`QUEUE_SLACK` before the hour so a job
  that waited in the queue is still found.
- backlog: one count per partition of its queued jobs on the same index, capped.
- webhook deliveries failing: counts on ``webhook_deliveries.due`` (``status, ...``).
- payouts in flight and stuck: counts on ``payouts.status_age`` (``status, updatedAt``).
- the last reconcile and audit-verify runs: ``check_runs`` (services/check_runs.py).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database

from ledger.states import JobStatus, PayoutStatus
from ledger.timeutil import utcnow
from services.check_runs import latest_runs
from services.webhook_events import DeliveryStatus

WINDOW_MINUTES = 60
QUEUE_SLACK = timedelta(minutes=10)  # how long a job may have waited queued and still be counted
JOBS_PER_RANGE = 5000  # documents read per (partition, terminal status) range
COUNT_CAP = 10_000  # counts stop here ("10000+"): a figure, not a scan
TERMINAL = (JobStatus.SETTLED, JobStatus.FAILED)


def nearest_rank(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0 < q <= 1) of ``values`` by nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Count:
    """A count that stopped at ``COUNT_CAP``: ``capped`` means "at least"."""

    value: int
    capped: bool = False

    def __str__(self) -> str:
        return f"{self.value}+" if self.capped else str(self.value)


@dataclass
class Overview:
    now: datetime
    start: datetime  # the first minute of the window
    settled_per_minute: dict[str, list[int]] = field(default_factory=dict)  # kind -> WINDOW_MINUTES counts
    settled_by_kind: dict[str, int] = field(default_factory=dict)
    failed_by_code: dict[str, int] = field(default_factory=dict)
    latency_p50_ms: list[float | None] = field(default_factory=list)  # per minute
    latency_p99_ms: list[float | None] = field(default_factory=list)
    p50_ms: float | None = None  # over the hour
    p99_ms: float | None = None
    decided: int = 0  # settled + failed in the hour
    truncated: bool = False
    backlog: list[Count] = field(default_factory=list)  # per partition
    deliveries_failed: Count = field(default_factory=lambda: Count(0))
    deliveries_retrying: Count = field(default_factory=lambda: Count(0))
    payouts: dict[str, Count] = field(default_factory=dict)  # pending, submitted, stuck
    checks: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    @property
    def settled(self) -> int:
        return sum(self.settled_by_kind.values())

    @property
    def failed(self) -> int:
        return sum(self.failed_by_code.values())


def _count(collection: Any, query: dict[str, Any], hint: str | None = None) -> Count:
    options: dict[str, Any] = {"limit": COUNT_CAP}
    if hint:
        options["hint"] = hint
    value = collection.count_documents(query, **options)
    return Count(value, value >= COUNT_CAP)


def _decided_jobs(db: Database, partitions: int, start: datetime, overview: Overview) -> list[dict[str, Any]]:
    """Terminal jobs decided since ``start``, per partition and status on the queue index."""
    found = []
    for partition in range(partitions):
        for status in TERMINAL:
            docs = list(db.jobs.find(
                {"partition": partition, "status": status, "createdAt": {"$gte": start - QUEUE_SLACK}},
                {"type": 1, "status": 1, "createdAt": 1, "settledAt": 1, "error.code": 1},
                hint="partition_queue").sort("createdAt", -1).limit(JOBS_PER_RANGE))
            overview.truncated |= len(docs) >= JOBS_PER_RANGE
            found += [d for d in docs if d.get("settledAt") is not None and d["settledAt"] >= start]
    return found


def _tally_jobs(overview: Overview, jobs: list[dict[str, Any]]) -> None:
    per_minute: dict[str, list[int]] = {}
    latencies: list[list[float]] = [[] for _ in range(WINDOW_MINUTES)]
    failed: Counter[str] = Counter()
    for job in jobs:
        minute = min(WINDOW_MINUTES - 1, int((job["settledAt"] - overview.start).total_seconds() // 60))
        latencies[minute].append((job["settledAt"] - job["createdAt"]).total_seconds() * 1000)
        if job["status"] == JobStatus.SETTLED:
            per_minute.setdefault(job["type"], [0] * WINDOW_MINUTES)[minute] += 1
        else:
            failed[(job.get("error") or {}).get("code") or "UNKNOWN"] += 1
    overview.settled_per_minute = dict(sorted(per_minute.items()))
    overview.settled_by_kind = {kind: sum(counts) for kind, counts in overview.settled_per_minute.items()}
    overview.failed_by_code = dict(sorted(failed.items(), key=lambda item: (-item[1], item[0])))
    overview.latency_p50_ms = [nearest_rank(m, 0.5) for m in latencies]
    overview.latency_p99_ms = [nearest_rank(m, 0.99) for m in latencies]
    everything = [v for m in latencies for v in m]
    overview.p50_ms, overview.p99_ms = nearest_rank(everything, 0.5), nearest_rank(everything, 0.99)
    overview.decided = len(everything)


def build(db: Database, partitions: int, stuck_after: timedelta, *, now: datetime | None = None) -> Overview:
    """The overview as of ``now``: the window is the ``WINDOW_MINUTES`` whole minutes up to it."""
    now = now or utcnow()
    start = now.replace(second=0, microsecond=0) - timedelta(minutes=WINDOW_MINUTES - 1)
    overview = Overview(now=now, start=start)
    _tally_jobs(overview, _decided_jobs(db, partitions, start, overview))
    overview.backlog = [_count(db.jobs, {"partition": p, "status": JobStatus.QUEUED}, hint="partition_queue")
                        for p in range(partitions)]
    overview.deliveries_failed = _count(db.webhook_deliveries, {"status": DeliveryStatus.FAILED})
    overview.deliveries_retrying = _count(db.webhook_deliveries,
                                          {"status": DeliveryStatus.PENDING, "attempts": {"$gte": 1}})
    overview.payouts = {
        "pending": _count(db.payouts, {"status": PayoutStatus.PENDING}),
        "submitted": _count(db.payouts, {"status": PayoutStatus.SUBMITTED}),
        "stuck": _count(db.payouts, {"status": PayoutStatus.SUBMITTED, "updatedAt": {"$lt": now - stuck_after}}),
    }
    overview.checks = latest_runs(db)
    return overview
