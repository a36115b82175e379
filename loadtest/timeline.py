"""When each settle task ran and when each batch committed, and what the pool did meanwhile.

Read from a ledger worker's JSON log (Celery's "Task ledger.settle[...] succeeded in
Xs" line carries the runtime and the partition) and from the jobs' ``settledAt`` (a
batch's jobs share it). Used by the drain stage of the bench and by
tests/settlement/test_no_idle_partition.py, so both judge idleness the same way.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple


class Run(NamedTuple):
    start: float  # Unix time
    end: float
    partition: int


def task_runs(log_paths: Iterable[Path]) -> list[Run]:
    """Every settle task the workers finished, from their JSON logs, by start time."""
    runs = []
    for path in log_paths:
        for line in Path(path).read_text(errors="replace").splitlines():
            if not line.startswith("{") or "ledger.settle[" not in line or "succeeded in" not in line:
                continue
            record = json.loads(line)
            data = record["data"]
            end = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
            runs.append(Run(end - float(data["runtime"]), end, json.loads(data["args"])[0]))
    return sorted(runs)


def commit_times(jobs: Iterable[dict[str, Any]]) -> dict[int, list[float]]:
    """Each partition's batch commit times, from jobs with ``partition`` and ``settledAt``."""
    found: dict[int, set[float]] = defaultdict(set)
    for job in jobs:
        if job.get("settledAt") is not None:
            found[job["partition"]].add(job["settledAt"].timestamp())
    return {p: sorted(times) for p, times in found.items()}


def batch_time(commits: dict[int, list[float]], runs: list[Run]) -> float:
    """The longest time one batch took: a task run's duration over the batches it committed
    (a run of one batch counts whole, so the task's own start and hand-over are in it)."""
    longest = 0.0
    for run in runs:
        inside = sum(1 for t in commits.get(run.partition, []) if run.start <= t <= run.end + 0.05)
        if inside:
            longest = max(longest, (run.end - run.start) / inside)
    return longest


def idle_with_work(runs: list[Run], finished: dict[int, float], processes: int, start: float, end: float,
                   step: float = 0.01) -> float:
    """The longest stretch in [start, end) during which fewer than ``processes`` tasks ran
    although a partition with queued jobs (not yet at its ``finished`` time) had none."""
    longest = current = 0.0
    t = start
    while t < end:
        running = {r.partition for r in runs if r.start <= t < r.end}
        waiting = any(t < done and p not in running for p, done in finished.items())
        current = current + step if len(running) < processes and waiting else 0.0
        longest = max(longest, current)
        t += step
    return round(longest, 3)


def per_second(times: Iterable[float]) -> list[int]:
    """How many of ``times`` fall in each second from the first."""
    ordered = sorted(times)
    if not ordered:
        return []
    counts = [0] * (int(ordered[-1] - ordered[0]) + 1)
    for t in ordered:
        counts[int(t - ordered[0])] += 1
    return counts
