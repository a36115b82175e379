"""Issue 22: no partition waits while the pool has a process to give it.

A real ledger worker with a pool of 2 processes drains 4 partitions, each holding
several batches of queued jobs (more partitions than processes, more than two batches
each). The worker's own log says when each settle task ran and on which partition;
the jobs' ``settledAt`` say when each batch committed. Asserted:

* the slice works: every partition commits its first batch within one round (each
  process spends at most one slice on another partition first), where a task that
  drained its partition to the end made the others wait for whole partitions;
* at no moment longer than one batch's time is a process idle while a partition with
  queued jobs has no task running (the doorbell of a yielding task is published at
  once, never left to the sweeper: no beat runs here);
* every job settled once and the money invariants hold.

The worker reads its own database and Redis database, so the session's shared worker
and sweeper never touch these partitions.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from ledger.operations import Credit
from tests.support.env import migrated_db, redis_db
from tests.support.invariants import assert_money_invariants
from tests.support.seeding import add_users
from tests.support.waiting import wait_for

DB_NAME = "purser_idle"
REDIS_DB = 11  # this module's broker database: no other suite's worker reads it
PARTITIONS, PROCESSES = 4, 2
BATCH, BATCHES_EACH = 20, 15
SLICE = 0.3
USERS_EACH = 5


def _queue_backlog(db: Any) -> list[dict[str, Any]]:
    from services.jobs import build_job

    jobs = []
    for p in range(PARTITIONS):
        users = add_users(db, USERS_EACH, p, of=PARTITIONS)
        for n in range(BATCH * BATCHES_EACH):
            jobs.append(build_job(Credit(users[n % USERS_EACH], 1 + n % 7, "backlog"), users[0], PARTITIONS,
                                  None, None))
    db.jobs.insert_many(jobs, ordered=True)
    return jobs


def _task_runs(log_path: Path) -> list[tuple[float, float, int]]:
    """(start, end, partition) of every settle task the worker finished, from its JSON log."""
    runs = []
    for line in log_path.read_text().splitlines():
        if not line.startswith("{") or "ledger.settle[" not in line or "succeeded in" not in line:
            continue
        record = json.loads(line)
        data = record["data"]
        end = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        runs.append((end - float(data["runtime"]), end, json.loads(data["args"])[0]))
    return sorted(runs)


def _commits(db: Any) -> dict[int, list[float]]:
    """Each partition's batch commit times (a batch's jobs share their settledAt)."""
    found: dict[int, set[float]] = defaultdict(set)
    for job in db.jobs.find({}, {"partition": 1, "settledAt": 1}):
        found[job["partition"]].add(job["settledAt"].timestamp())
    return {p: sorted(times) for p, times in found.items()}


def _idle_with_work(runs: list[tuple[float, float, int]], finished: dict[int, float],
                    start: float, end: float, step: float = 0.01) -> float:
    """The longest stretch during which fewer than PROCESSES tasks ran although a partition
    with queued jobs had none running."""
    longest = current = 0.0
    t = start
    while t < end:
        running = {p for s, e, p in runs if s <= t < e}
        waiting = [p for p, done in finished.items() if t < done and p not in running]
        current = current + step if len(running) < PROCESSES and waiting else 0.0
        longest = max(longest, current)
        t += step
    return longest


def test_every_partition_is_settled_while_a_process_is_free(stack_env: dict[str, str], celery_worker_proc: Any,
                                                           tmp_path: Path) -> None:
    migrated_db(stack_env["MONGODB_URI"], DB_NAME)
    db = MongoClient(stack_env["MONGODB_URI"], tz_aware=True)[DB_NAME]
    jobs = _queue_backlog(db)
    env = {"MONGODB_DB": DB_NAME, "REDIS_URL": redis_db(stack_env["REDIS_URL"], REDIS_DB),
           "LEDGER_PARTITIONS": str(PARTITIONS), "SETTLE_BATCH_MAX": str(BATCH),
           "SETTLE_SLICE_SECONDS": str(SLICE)}
    worker = celery_worker_proc("worker", concurrency=PROCESSES, extra_env=env)
    _ring_each_partition_once(env["REDIS_URL"])
    wait_for(lambda: db.jobs.count_documents({"status": "queued"}) == 0, timeout=120, what="the backlog drained")
    time.sleep(0.5)  # the last task's log line follows its commit

    commits = _commits(db)
    runs = _task_runs(worker.log_path)
    assert commits.keys() == set(range(PARTITIONS)), commits.keys()
    first_commit = min(t for times in commits.values() for t in times)
    batch_time = _batch_time(commits, runs)
    # One round: each process may finish one slice (plus the batch in flight) of another
    # partition before it takes this one; a whole-partition drain took BATCHES_EACH batches.
    round_ = SLICE + 2 * batch_time + 0.25
    late = {p: round(times[0] - first_commit, 2) for p, times in commits.items() if times[0] - first_commit > round_}
    assert not late, f"partitions waited longer than a round ({round_:.2f} s) for their first batch: {late}"
    finished = {p: times[-1] for p, times in commits.items()}
    idle = _idle_with_work(runs, finished, first_commit, max(finished.values()))
    assert idle <= batch_time + 0.1, f"a process sat idle for {idle:.2f} s while a partition waited"
    assert sum(1 for r in runs if r[2] in commits) > PARTITIONS, "no task yielded its slice"

    settled = {j["_id"]: j for j in db.jobs.find({}, {"status": 1})}
    assert len(settled) == len(jobs) and all(j["status"] == "settled" for j in settled.values())
    assert_money_invariants(db)


def _ring_each_partition_once(redis_url: str) -> None:
    import dataclasses

    from infra.config import get_settings
    from workers.celery_app import create_celery

    app = create_celery(dataclasses.replace(get_settings(), redis_url=redis_url, ledger_partitions=PARTITIONS))
    try:
        for p in range(PARTITIONS):
            app.send_task("ledger.settle", args=[p], queue=f"ledger.{p}")
    finally:
        app.close()


def _batch_time(commits: dict[int, list[float]], runs: list[tuple[float, float, int]]) -> float:
    """The longest time between two commits of one partition inside one task run: one batch."""
    longest = 0.0
    for start, end, p in runs:
        inside = [t for t in commits.get(p, []) if start <= t <= end + 0.05]
        longest = max([longest, *(b - a for a, b in zip(inside, inside[1:], strict=False))])
    assert longest > 0, "no task settled two batches in a row"
    return longest
