"""Issue 18, item 9: a slow batch or a worker's limit never fails a job.

Only a job that raises the same error every time it is settled alone is failed.
The interrupt is raised from the batch's clock, i.e. inside the transaction between
reading the jobs and writing their outcomes, where Celery's asynchronous
``SoftTimeLimitExceeded`` lands when a batch is slow.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from ledger.operations import Transfer
from ledger.timeutil import utcnow
from services.settlement import settle_partition
from tests.support.invariants import assert_money_invariants
from tests.support.journal import count_records
from tests.support.seeding import add_user, partitions
from tests.support.settle import balances, fund_here, queue_jobs


def _clock_raising(exc: type[Exception], times: int | None) -> Any:
    calls = {"n": 0}

    def clock() -> Any:
        calls["n"] += 1
        if times is None or calls["n"] <= times:
            raise exc("injected")
        return utcnow()
    return clock


def _settle(db: Any, clock: Any) -> Any:
    return settle_partition(db, 1, partitions=partitions(), batch_max=50, clock=clock,
                            transient=(SoftTimeLimitExceeded,))


def test_a_soft_time_limit_in_a_batch_leaves_its_jobs_queued(db):
    sender, receiver = add_user(db, partition=1), add_user(db, partition=1)
    fund_here(db, [sender], 100)
    job = queue_jobs(db, [Transfer(sender, receiver, 30)])[0]

    with pytest.raises(SoftTimeLimitExceeded):
        _settle(db, _clock_raising(SoftTimeLimitExceeded, None))
    assert db.jobs.find_one({"_id": job["_id"]})["status"] == "queued"
    assert count_records(db, {"_id": job["_id"]}) == 0

    assert _settle(db, utcnow).settled == 1
    assert balances(db, [sender, receiver]) == {sender: 70, receiver: 30}
    assert_money_invariants(db)


def test_an_error_that_does_not_recur_alone_fails_no_job(db):
    sender, receiver = add_user(db, partition=1), add_user(db, partition=1)
    fund_here(db, [sender], 100)
    jobs = queue_jobs(db, [Transfer(sender, receiver, 10) for _ in range(3)])

    # The batch raises once (a slow dependency, a timeout): isolation retries each job
    # alone and they settle; none is failed for an error it did not cause.
    drained = _settle(db, _clock_raising(TimeoutError, 1))
    assert drained.settled == 3 and drained.failed == 0
    assert {db.jobs.find_one({"_id": j["_id"]})["status"] for j in jobs} == {"settled"}
    assert_money_invariants(db)


def test_a_job_that_raises_every_time_alone_is_failed_and_its_partition_moves_on(db):
    sender, receiver = add_user(db, partition=1), add_user(db, partition=1)
    fund_here(db, [sender], 100)
    job = queue_jobs(db, [Transfer(sender, receiver, 10)])[0]

    drained = _settle(db, _clock_raising(ZeroDivisionError, 3))  # the batch, then both solo tries
    assert drained.failed == 1
    failed = db.jobs.find_one({"_id": job["_id"]})
    assert failed["status"] == "failed" and failed["error"]["code"] == "INTERNAL_ERROR"
    assert balances(db, [sender, receiver]) == {sender: 100, receiver: 0}
    assert_money_invariants(db)
