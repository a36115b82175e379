"""The benches' one plan type: what a run starts and every size and duration its stages read.

``python -m loadtest.bench`` (issue 18's stages) and ``python -m loadtest.wait_bench``
(issue 15's waiting scenario) each fill a :class:`Plan` from their arguments. Every
field says which bench reads it; :meth:`Plan.record` is what a bench writes into its
results file: the fields it read, nothing of the other bench's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

BENCH = "bench"  # loadtest.bench
WAIT = "wait"  # loadtest.wait_bench
RESULTS = Path(__file__).resolve().parent / "results"


def _read_by(default: Any, *benches: str) -> Any:
    return field(default=default, metadata={"read_by": benches})


@dataclass
class Plan:
    """Sizes and durations of one bench run (``Plan.quick_plan()`` shrinks the bench's)."""

    # The stack (both benches)
    web_workers: int = _read_by(2, BENCH, WAIT)  # gunicorn worker processes
    web_threads: int = _read_by(8, BENCH, WAIT)  # threads per gunicorn worker (gthread)
    # loadtest.bench: issue 18's stages
    duration: float = _read_by(40.0, BENCH)  # saturation seconds per number of ledger processes (split over rounds)
    rounds: int = _read_by(2, BENCH)  # alternating rounds of the concurrency and end-to-end comparisons
    warmup: float = _read_by(3.0, BENCH)
    store_seconds: float = _read_by(5.0, BENCH)
    parallel_seconds: float = _read_by(8.0, BENCH)  # per thread count, split over rounds
    queue_tasks: int = _read_by(5000, BENCH)
    profile_jobs: int = _read_by(1500, BENCH)  # per in-process round
    accept_seconds: float = _read_by(15.0, BENCH)
    client_threads: int = _read_by(16, BENCH)
    e2e_seconds: float = _read_by(30.0, BENCH)  # per design and round
    fixed_rate: float = _read_by(50.0, BENCH)
    fixed_seconds: float = _read_by(30.0, BENCH)
    burst: int = _read_by(200, BENCH)
    subscriptions: int = _read_by(10_000, BENCH)
    drain_jobs: int = _read_by(4400, BENCH)  # issue 22's backlog: more than two batches in each of 8 partitions
    live_seconds: float = _read_by(20.0, BENCH)
    free: int = _read_by(1500, BENCH)
    premium: int = _read_by(1000, BENCH)
    creators: int = _read_by(100, BENCH)
    submit_threads: int = _read_by(4, BENCH)
    quick: bool = _read_by(False, BENCH)
    # loadtest.wait_bench: clients waiting on their jobs while others read balances
    waiters: int = _read_by(500, WAIT)
    readers: int = _read_by(20, WAIT)
    reader_interval: float = _read_by(0.1, WAIT)
    hold: float = _read_by(5.0, WAIT)
    wait_seconds: int = _read_by(10, WAIT)
    baseline: float = _read_by(3.0, WAIT)
    waits_per_user: int = _read_by(5, WAIT)
    worker_class: str = _read_by("gevent", WAIT)
    # Waiters arrive evenly over this many seconds (200/s for 500): clients wait on jobs they
    # just submitted, so arrivals follow the submissions; 0 = all 500 in one instant.
    ramp: float = _read_by(2.5, WAIT)
    control: bool = _read_by(False, WAIT)  # hold and settle the jobs, but nobody waits (settlement's own effect)
    profile: Path | None = _read_by(None, WAIT)  # py-spy collapsed stacks of web and worker processes go here
    priority: int | None = _read_by(None, WAIT)  # autogroup nice of the stack's sessions (shared machines)

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(duration=10.0, rounds=1, warmup=2.0, store_seconds=2.0, parallel_seconds=3.0, queue_tasks=1000,
                   profile_jobs=600, accept_seconds=6.0, e2e_seconds=10.0, fixed_seconds=10.0,
                   subscriptions=2000, free=400, premium=250, creators=40, live_seconds=15.0, quick=True)

    def record(self, bench: str) -> dict[str, Any]:
        """The fields ``bench`` reads, as JSON values (paths as strings), for its results file."""
        return {f.name: str(value) if isinstance(value := getattr(self, f.name), Path) else value
                for f in fields(self) if bench in f.metadata["read_by"]}
