"""Deterministic edge paths of the money path (issue 17, items 2 and 4).

Real store, in this process, no worker: the interleaving is chosen by the test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError

import services.batch_runner as batch_runner
import services.settlement as settlement
from ledger.money import PAYOUTS_IN_FLIGHT
from ledger.operations import Payout, PayoutEvent, Transfer
from ledger.routing import bucket_id
from ledger.timeutil import utcnow
from services import idempotency
from services.jobs import KeyClaim, Outcome, accept_job, build_job
from tests.support.invariants import assert_money_invariants
from tests.support.seeding import add_user, partitions
from tests.support.settle import balances, fund_here, queue_jobs


@pytest.fixture
def db(fresh_db: Any) -> Iterator[Any]:
    """A fresh database and NO worker: every settle below runs in this process."""
    yield fresh_db


def test_debit_guard_refuses_a_decision_made_on_a_stale_balance(db, monkeypatch):
    """The store-side guard (balance >= debit) is the second line behind the domain rule.

    The first snapshot the settler reads claims the sender has 1000 (stale: the store
    says 100). The write must not match, the batch retries on a fresh read, and the
    transfer fails for insufficient funds instead of taking the wallet negative.
    """
    sender, receiver = add_user(db, partition=0), add_user(db, partition=0)
    fund_here(db, [sender], 100)
    job = queue_jobs(db, [Transfer(sender, receiver, 500)])[0]
    real = batch_runner.load_snapshot
    calls = {"n": 0}

    def stale_once(*args: Any, **kwargs: Any) -> Any:
        snap = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            snap.wallets[sender].balance = 1000
        return snap

    monkeypatch.setattr(batch_runner, "load_snapshot", stale_once)
    settlement.settle_partition(db, 0, partitions=partitions(), batch_max=200)
    assert calls["n"] >= 2, "the stale decision was not retried"
    done = db.jobs.find_one({"_id": job["_id"]})
    assert done["status"] == "failed" and done["error"]["code"] == "INSUFFICIENT_FUNDS"
    assert balances(db, [sender, receiver]) == {sender: 100, receiver: 0}
    monkeypatch.undo()
    assert_money_invariants(db)


def test_the_in_flight_bucket_guard_refuses_to_post_more_than_it_holds(db, monkeypatch):
    """The payout hold bucket can only give back what it holds (the store-side guard).

    The domain rule refuses a hold bucket short of the payout; here the settler's
    snapshot is stale and says the bucket holds the whole payout while the store holds
    less (as drift would leave it). The write must not match: nothing moves, the event
    stays queued, and the drain reports more work once its time runs out.
    """
    creator = add_user(db, partition=2, role="creator")
    fund_here(db, [creator], 5000)
    payout = queue_jobs(db, [Payout(creator, 1200, "x" * 24)])[0]["_id"]
    settlement.settle_partition(db, 2, partitions=partitions(), batch_max=200)
    bucket = bucket_id(PAYOUTS_IN_FLIGHT, 2)
    assert db.wallets.find_one({"_id": bucket})["balance"] == 1200
    db.wallets.update_one({"_id": bucket}, {"$inc": {"balance": -1000}})
    real = batch_runner.load_snapshot

    def stale(*args: Any, **kwargs: Any) -> Any:
        snap = real(*args, **kwargs)
        snap.wallets[PAYOUTS_IN_FLIGHT].balance = 1200
        return snap

    monkeypatch.setattr(batch_runner, "load_snapshot", stale)
    event = queue_jobs(db, [PayoutEvent(creator, payout, "paid", "evt-short")])[0]["_id"]
    drained = settlement.settle_partition(db, 2, partitions=partitions(), batch_max=200, time_budget=1.0)
    assert drained.held == [event] and not drained.more and drained.settled == 0
    assert db.jobs.find_one({"_id": event})["status"] == "queued"
    assert db.wallets.find_one({"_id": bucket})["balance"] == 200
    assert db.payouts.find_one({"_id": payout})["status"] == "pending"
    assert balances(db, [creator]) == {creator: 3800}


def _accept(db: Any, user: str, key: str, fp: str = "fp", amount: int = 5, **kw: Any) -> Any:
    """Accept a transfer by ``user`` under ``key`` (fingerprint ``fp``), no doorbell."""
    return accept_job(db, Transfer(user, "someone", amount), user, partitions=partitions(), ring=lambda *a: None,
                      key=key, claim=KeyClaim(user, fp, 24), **kw)


def test_the_job_holds_its_key_and_a_replay_is_derived_from_it(db):
    user = add_user(db, partition=0)
    first = _accept(db, user, "key-1")
    assert first.outcome == Outcome.ACCEPTED and first.job is not None
    stored = db.jobs.find_one({"_id": first.job["_id"]})
    assert stored["idem"]["owner"] == user and stored["idem"]["key"] == "key-1" and stored["idem"]["fp"] == "fp"
    assert stored["idem"]["expiresAt"] - stored["createdAt"] == timedelta(hours=24)
    # The job moves on (settled, with a result): the replay is still the first 202, byte for byte.
    db.jobs.update_one({"_id": stored["_id"]}, {"$set": {"status": "settled", "settledAt": utcnow(),
                                                         "result": {"amount": 5}}})
    again = _accept(db, user, "key-1")
    assert again.outcome == Outcome.REPLAYED and again.response == first.response
    assert db.jobs.count_documents({"idem.key": "key-1"}) == 1


def test_another_fingerprint_is_a_mismatch_and_keys_are_per_owner(db):
    user, other = add_user(db, partition=0), add_user(db, partition=0)
    _accept(db, user, "key-1")
    assert _accept(db, user, "key-1", fp="other").outcome == Outcome.MISMATCH
    assert _accept(db, other, "key-1").outcome == Outcome.ACCEPTED
    assert db.jobs.count_documents({"idem.key": "key-1"}) == 2


def test_a_late_first_insert_fails_on_the_key_and_makes_no_second_job(db):
    """The unknown-outcome case: the first request's insert reaches the store AFTER the
    retry (same key) stored its job. The index refuses it; the retry's job is the one."""
    user = add_user(db, partition=0)
    retry = _accept(db, user, "key-late")
    late = build_job(Transfer(user, "someone", 5), user, partitions(), None, "key-late")
    late["idem"] = idempotency.key_fields(user, "key-late", "fp", 24, late["createdAt"])
    with pytest.raises(DuplicateKeyError) as raised:
        db.jobs.insert_one(late)
    assert idempotency.is_key_conflict(raised.value)
    assert [j["_id"] for j in db.jobs.find({"idem.key": "key-late"})] == [retry.job["_id"]]


def test_concurrent_first_requests_with_one_key_make_one_job_and_the_losers_replay_it(db):
    user = add_user(db, partition=0)
    n = 8
    barrier = threading.Barrier(n)

    def one(_: int) -> Any:
        barrier.wait(timeout=30)
        return _accept(db, user, "key-race")

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    assert sorted(r.outcome for r in results) == sorted([Outcome.ACCEPTED] + [Outcome.REPLAYED] * (n - 1))
    assert len({r.response.body for r in results}) == 1
    assert db.jobs.count_documents({"idem.key": "key-race"}) == 1


def test_expired_keys_are_removed_in_chunks_the_jobs_stay_and_the_key_is_new_again(db):
    user = add_user(db, partition=0)
    jobs = [_accept(db, user, f"key-{n}").job["_id"] for n in range(5)]
    keep = _accept(db, user, "key-fresh").job["_id"]
    past = utcnow() - timedelta(minutes=1)
    db.jobs.update_many({"_id": {"$in": jobs}}, {"$set": {"idem.expiresAt": past}})
    assert idempotency.expire_keys(db, chunk=2, max_chunks=2) == 4  # bounded per call
    assert idempotency.expire_keys(db, chunk=2, max_chunks=2) == 1
    assert idempotency.expire_keys(db) == 0
    assert db.jobs.count_documents({"_id": {"$in": jobs}}) == 5  # jobs are kept for good
    assert db.jobs.count_documents({"_id": {"$in": jobs}, "idem": {"$exists": True}}) == 0
    assert db.jobs.find_one({"_id": keep})["idem"]["key"] == "key-fresh"
    again = _accept(db, user, "key-0")
    assert again.outcome == Outcome.ACCEPTED and again.job["_id"] not in jobs
    # The expiry query is an index scan of the expired keys, not of the jobs' history.
    plan = db.jobs.find({"idem.expiresAt": {"$lte": utcnow()}}, {"_id": 1}).sort("idem.expiresAt", 1) \
        .limit(2).hint(idempotency.EXPIRY_INDEX).explain()["queryPlanner"]["winningPlan"]
    assert "COLLSCAN" not in str(plan) and idempotency.EXPIRY_INDEX in str(plan)


def test_a_key_expired_before_beat_removed_it_is_released_by_the_next_request(db):
    user = add_user(db, partition=0)
    first = _accept(db, user, "key-exp").job["_id"]
    db.jobs.update_one({"_id": first}, {"$set": {"idem.expiresAt": utcnow() - timedelta(seconds=1)}})
    second = _accept(db, user, "key-exp")
    assert second.outcome == Outcome.ACCEPTED and second.job["_id"] != first
    assert "idem" not in db.jobs.find_one({"_id": first})


def test_a_credit_received_is_spendable_in_the_batch_that_applies_it(db):
    """Inbound credits are applied before the owner's own jobs are decided."""
    payer, owner, friend = add_user(db, partition=0), add_user(db, partition=1), add_user(db, partition=1)
    fund_here(db, [payer], 100)
    queue_jobs(db, [Transfer(payer, owner, 30)])
    settlement.settle_partition(db, 0, partitions=partitions(), batch_max=200)
    assert db.credits.count_documents({"to": 1, "applied": False}) == 1
    spend = queue_jobs(db, [Transfer(owner, friend, 30)])[0]
    drained = settlement.settle_partition(db, 1, partitions=partitions(), batch_max=200)
    assert drained.batches[0].credits_applied == 1 and drained.batches[0].settled == 1
    assert db.jobs.find_one({"_id": spend["_id"]})["status"] == "settled"
    assert balances(db, [payer, owner, friend]) == {payer: 70, owner: 0, friend: 30}
    assert_money_invariants(db)


def test_a_payout_keeps_one_id_for_job_and_payout_and_a_retry_replays_it(db):
    """A payout's id is its job's id (the provider's idempotency key). With the job as the
    key's claim, a retry replays the first job; it never stores a second id for the payout."""

    user = add_user(db, partition=0)
    first = accept_job(db, Payout(user, 1500, "job-first"), user, partitions=partitions(), ring=lambda *a: None,
                       key="key-p", claim=KeyClaim(user, "fp", 24), job_id="job-first")
    assert first.job is not None and first.job["params"]["payout_id"] == "job-first"
    got = accept_job(db, Payout(user, 1500, "job-retry"), user, partitions=partitions(), ring=lambda *a: None,
                     key="key-p", claim=KeyClaim(user, "fp", 24), job_id="job-retry")
    assert got.outcome == Outcome.REPLAYED and got.job["_id"] == "job-first"
    assert got.job["params"]["payout_id"] == "job-first"
    assert db.jobs.count_documents({"_id": "job-retry"}) == 0


def test_beat_runs_the_key_expiry_task_and_it_keeps_the_jobs(db):
    from infra.config import get_settings
    from tasks.maintenance import expire_keys
    from workers.celery_app import create_celery

    entry = create_celery(get_settings()).conf.beat_schedule["idempotency-expiry"]
    assert entry["task"] == expire_keys.name == "idempotency.expire"
    assert entry["schedule"] == timedelta(seconds=get_settings().idempotency_expiry_seconds)
    user = add_user(db, partition=0)
    job = _accept(db, user, "key-beat").job["_id"]
    db.jobs.update_one({"_id": job}, {"$set": {"idem.expiresAt": utcnow() - timedelta(seconds=1)}})
    assert expire_keys.run() == 1
    assert "idem" not in db.jobs.find_one({"_id": job})
