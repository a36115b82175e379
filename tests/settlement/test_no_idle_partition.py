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

import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from ledger.operations import Credit
from loadtest import timeline
from tests.support.env import migrated_db, redis_db
from tests.support.invariants import assert_money_invariants
from tests.support.seeding import add_users
from tests.support.waiting import wait_for

DB_NAME = "purser_idle"
REDIS_DB = 12  # this module's broker database: no other suite's worker reads it
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

    commits = timeline.commit_times(db.jobs.find({}, {"partition": 1, "settledAt": 1}))
    runs = timeline.task_runs([worker.log_path])
    assert commits.keys() == set(range(PARTITIONS)), commits.keys()
    first_commit = min(t for times in commits.values() for t in times)
    batch_time = timeline.batch_time(commits, runs)
    assert batch_time > 0, "no task committed a batch"
    # One round: each process may finish one slice (plus the batch in flight) of another
    # partition before it takes this one; a whole-partition drain took BATCHES_EACH batches.
    round_ = SLICE + 2 * batch_time + 0.25
    late = {p: round(times[0] - first_commit, 2) for p, times in commits.items() if times[0] - first_commit > round_}
    assert not late, f"partitions waited longer than a round ({round_:.2f} s) for their first batch: {late}"
    finished = {p: times[-1] for p, times in commits.items()}
    idle = timeline.idle_with_work(runs, finished, PROCESSES, first_commit, max(finished.values()))
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
