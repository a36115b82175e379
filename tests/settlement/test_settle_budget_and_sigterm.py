"""Issue 17, item 4: a drain that runs out of time rings again; SIGTERM lets the work in flight commit.

Both tests publish their doorbells to a Redis database of their own on the session's
Redis server, so the session's shared worker (which consumes every ledger queue of
the main database) can neither take a doorbell from under them nor settle for them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from pymongo.database import Database

from infra.queues import partition_queue
from ledger.operations import Credit
from tests.support.env import redis_db
from tests.support.invariants import assert_money_invariants
from tests.support.journal import count_records
from tests.support.seeding import add_users
from tests.support.settle import balances, queue_jobs
from tests.support.waiting import wait_drained, wait_for

BUDGET_REDIS_DB = 9  # the re-ring test's broker database (tests/support/env.py redis_db)
SIGTERM_REDIS_DB = 10  # the SIGTERM test's broker and worker database


def _broker(number: int) -> redis.Redis:
    client = redis.Redis.from_url(redis_db(os.environ["REDIS_URL"], number))
    client.flushdb()  # this module's own database: leftovers of an earlier run only
    return client


def _celery_on(number: int) -> Any:
    """A Celery app configured like the process app, with its broker on database ``number``."""
    from infra.config import get_settings
    from workers.celery_app import create_celery

    return create_celery(dataclasses.replace(get_settings(), redis_url=redis_db(os.environ["REDIS_URL"], number)))


def _doorbells(broker: redis.Redis, partition: int) -> list[list[Any]]:
    """Take every message waiting on ``ledger.<partition>``: the settle task's positional args each."""
    queue = partition_queue(partition)
    raw = broker.lrange(queue, 0, -1)
    broker.delete(queue)
    out = []
    for item in raw:
        message = json.loads(item)
        assert message["headers"]["task"] == "ledger.settle", message["headers"]
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert kwargs == {}, kwargs
        out.append(args)
    return out


class _Clock:
    """``time`` for services/settlement.py and batch_runner.py: its monotonic clock jumps when told (the rest
    is real)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


@pytest.fixture
def budget_task(fresh_db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The real ``ledger.settle`` task, run in this process, where every batch takes longer than the budget.

    The budget is 30 s and the drain's clock moves 31 s after each committed batch (in
    ``_record``, the task's ``on_batch``): one batch per run, whatever the machine's speed.
    Batches hold 5 jobs; doorbells go to Redis database ``BUDGET_REDIS_DB``.
    """
    import infra.config
    import services.batch_runner
    import services.settlement
    import tasks.settle
    import workers.celery_app

    budget = 30.0
    clock = _Clock()
    drains: list[Any] = []
    app = _celery_on(BUDGET_REDIS_DB)
    monkeypatch.setattr(infra.config, "_settings", dataclasses.replace(
        infra.config.get_settings(), settle_batch_max=5, settle_slice_seconds=budget))
    monkeypatch.setattr(workers.celery_app, "_app", app)
    monkeypatch.setattr(services.settlement, "time", clock)
    monkeypatch.setattr(services.batch_runner, "time", clock)
    record, settle_partition = tasks.settle._record, tasks.settle.settle_partition

    def slow_record(db: Database, partition: int, batch: Any) -> None:
        record(db, partition, batch)
        clock.offset += budget + 1

    def observed_settle_partition(*args: Any, **kwargs: Any) -> Any:
        assert kwargs["time_budget"] == budget
        drained = settle_partition(*args, **kwargs)
        drains.append(drained)
        return drained

    monkeypatch.setattr(tasks.settle, "_record", slow_record)
    monkeypatch.setattr(tasks.settle, "settle_partition", observed_settle_partition)
    try:
        yield {"task": tasks.settle.settle, "ring": tasks.settle.ring, "broker": _broker(BUDGET_REDIS_DB),
               "drains": drains}
    finally:
        app.close()


def test_a_drain_out_of_time_rings_its_partition_again_until_all_settled_once(
        fresh_db: Database, budget_task: dict[str, Any]) -> None:
    db, broker, drains = fresh_db, budget_task["broker"], budget_task["drains"]
    partition = 2
    users = add_users(db, 4, partition=partition)
    jobs = queue_jobs(db, [Credit(u, 10 + i, "budget") for i in range(3) for u in users])  # 12 jobs
    assert {j["partition"] for j in jobs} == {partition}

    budget_task["ring"](partition)  # the doorbell the API rings after accepting
    runs: list[dict[str, int]] = []
    while doorbells := _doorbells(broker, partition):
        # Exactly one doorbell waits each time: the previous run's re-ring (or the first ring).
        assert doorbells == [[partition]], doorbells
        assert len(runs) < 10, f"still ringing after {runs}"
        runs.append(budget_task["task"](*doorbells[0]))

    # 5 + 5 + 2 jobs, one batch per run; each run that settled something was out of
    # time afterwards and rang again; the fourth found nothing and did not ring.
    assert [r["settled"] for r in runs] == [5, 5, 2, 0], runs
    assert [d.more for d in drains] == [True, True, True, False]
    assert [len(d.batches) for d in drains] == [1, 1, 1, 0]
    settled = {j["_id"]: j for j in db.jobs.find({"_id": {"$in": [j["_id"] for j in jobs]}})}
    assert all(j["status"] == "settled" for j in settled.values()), [j["status"] for j in settled.values()]
    # Exactly once: one transaction per job, each wallet credited with its three amounts once.
    assert count_records(db, {"jobId": {"$in": list(settled)}}) == 12
    assert balances(db, users) == {u: 10 + 11 + 12 for u in users}
    assert_money_invariants(db)


def test_sigterm_lets_the_work_in_flight_commit_and_a_restarted_worker_settles_the_rest(
        fresh_db: Database, celery_worker_proc: Callable[..., Any]) -> None:
    db = fresh_db
    busy, waiting = 1, 3  # partitions
    busy_users, waiting_users = add_users(db, 30, partition=busy), add_users(db, 10, partition=waiting)
    busy_jobs = queue_jobs(db, [Credit(u, 1, "sigterm") for _ in range(10) for u in busy_users])  # 300
    waiting_jobs = queue_jobs(db, [Credit(u, 2, "sigterm") for _ in range(6) for u in waiting_users])  # 60
    busy_ids, waiting_ids = [j["_id"] for j in busy_jobs], [j["_id"] for j in waiting_jobs]
    broker = _broker(SIGTERM_REDIS_DB)
    app = _celery_on(SIGTERM_REDIS_DB)
    # One task drains the whole partition: with the default time slice (0.5 s, issue 22) a
    # slow first batch ends the task and re-rings, and a SIGTERM landing between that task
    # and the next finds no work in flight at all (the flake this removes: 50 settled at the
    # signal and at exit, about one run in six).
    env = {"REDIS_URL": redis_db(os.environ["REDIS_URL"], SIGTERM_REDIS_DB), "SETTLE_BATCH_MAX": "50",
           "SETTLE_SLICE_SECONDS": "60"}
    queues = [partition_queue(busy), partition_queue(waiting)]

    def settled(ids: list[str]) -> int:
        return db.jobs.count_documents({"_id": {"$in": ids}, "status": "settled"})

    # The second commit of the drain is held 2 s by the store: SIGTERM, sent as soon as the
    # first batch of 50 is visible, arrives while the drain is between two batches or inside one.
    db.client.admin.command("configureFailPoint", "failCommand", mode={"skip": 1, "times": 1},
                            data={"failCommands": ["commitTransaction"], "blockConnection": True,
                                  "blockTimeMS": 2000})
    try:
        worker = celery_worker_proc("worker", queues=queues, concurrency=1, extra_env=env)
        app.send_task("ledger.settle", args=[busy], queue=partition_queue(busy))
        wait_for(lambda: settled(busy_ids) > 0, timeout=30, poll=0.02, what="the first batch committed")
        # A doorbell for another partition arrives while the only pool process is busy.
        app.send_task("ledger.settle", args=[waiting], queue=partition_queue(waiting))
        os.kill(worker.pid, signal.SIGTERM)  # the main process only, as a supervisor stops a worker
        at_signal = settled(busy_ids)
        assert 0 < at_signal < len(busy_ids), at_signal  # the drain was under way
        wait_for(lambda: not worker.alive, timeout=60, what="the worker to exit after SIGTERM")
    finally:
        db.client.admin.command("configureFailPoint", "failCommand", mode="off")
    assert worker.stop() == 0, worker.log_tail()  # a warm shutdown, not a kill

    # The work in flight when the signal came was committed, not dropped (Celery's warm
    # shutdown lets the running task finish its drain), and nothing is half-applied: every
    # job is settled with its transaction or still queued, and balances equal the ledger.
    at_exit = settled(busy_ids)
    assert at_exit > at_signal, (at_signal, at_exit)
    statuses = set(db.jobs.distinct("status"))
    assert statuses <= {"settled", "queued"}, statuses
    assert count_records(db, {}) == db.jobs.count_documents({"status": "settled"})
    # The doorbell the busy worker never started is back on the broker, nothing unacknowledged.
    assert settled(waiting_ids) == 0
    assert broker.llen(partition_queue(waiting)) == 1
    assert broker.hlen("unacked") == 0

    # A restarted worker settles the rest, each job once.
    celery_worker_proc("worker", queues=queues, concurrency=1, extra_env=env)
    wait_drained(db, job_ids=busy_ids + waiting_ids, timeout=60)
    assert settled(busy_ids) == len(busy_ids) and settled(waiting_ids) == len(waiting_ids)
    assert balances(db, busy_users) == dict.fromkeys(busy_users, 10)
    assert balances(db, waiting_users) == dict.fromkeys(waiting_users, 12)
    app.close()
    assert_money_invariants(db)
