"""Deterministic edge paths of the money path (issue 17, items 2 and 4).

Real store, in this process, no worker: the interleaving is chosen by the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import services.batch_runner as batch_runner
import services.settlement as settlement
from ledger.money import PAYOUTS_IN_FLIGHT
from ledger.operations import Payout, PayoutEvent, Transfer
from ledger.routing import bucket_id
from ledger.timeutil import utcnow
from services import idempotency
from services.jobs import KeyClaim, accept_job
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


def _response(job_id: str) -> dict[str, Any]:
    return {"status": 202, "body": f'{{"id":"{job_id}"}}', "headers": {"Location": f"/api/jobs/{job_id}"}}


def test_a_claim_without_its_job_is_in_use_until_stale(db):
    t0 = utcnow()
    first = idempotency.claim(db, "owner-1", "key-1", "fp", "job-a", 24, _response("job-a"), now=t0)
    assert first.state == idempotency.NEW
    assert idempotency.STALE_AFTER == timedelta(seconds=30)
    almost = t0 + timedelta(seconds=29)
    again = idempotency.claim(db, "owner-1", "key-1", "fp", "job-b", 24, _response("job-b"), now=almost)
    assert again.state == idempotency.IN_USE and again.record["jobId"] == "job-a"


def test_stale_claim_is_taken_over_keeping_the_original_job_id(db):
    t0 = utcnow()
    idempotency.claim(db, "owner-1", "key-1", "fp", "job-a", 24, _response("job-a"), now=t0)
    later = t0 + idempotency.STALE_AFTER
    taken = idempotency.claim(db, "owner-1", "key-1", "fp", "job-b", 24, _response("job-b"), now=later)
    assert taken.state == idempotency.NEW
    # The retry must re-insert job-a: a late insert of the first request then collides
    # with it instead of making a second job (a double charge).
    assert taken.record["jobId"] == "job-a"
    stored = db.idempotency_keys.find_one({"ownerId": "owner-1", "key": "key-1"})
    assert stored["jobId"] == "job-a"
    # A second concurrent taker of the same stale claim loses (the takeover is atomic).
    loser = idempotency.claim(db, "owner-1", "key-1", "fp", "job-c", 24, _response("job-c"), now=later)
    assert loser.state == idempotency.IN_USE


def test_claim_with_another_fingerprint_is_a_mismatch_and_with_its_job_a_replay(db):
    t0 = utcnow()
    idempotency.claim(db, "owner-1", "key-1", "fp", "job-a", 24, _response("job-a"), now=t0)
    assert idempotency.claim(db, "owner-1", "key-1", "other", "job-b", 24, {}, now=t0).state == idempotency.MISMATCH
    # Keys are per owner: another owner's same key is a new claim.
    assert idempotency.claim(db, "owner-2", "key-1", "fp", "job-c", 24, {}, now=t0).state == idempotency.NEW
    db.jobs.insert_one({"_id": "job-a", "status": "queued"})
    assert idempotency.claim(db, "owner-1", "key-1", "fp", "job-d", 24, {}, now=t0).state == idempotency.REPLAY
    db.jobs.delete_one({"_id": "job-a"})


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


def test_a_payout_retried_over_a_stale_claim_keeps_one_id_for_job_and_payout(db):
    """A payout's id is its job's id (the provider's idempotency key). A retry that takes
    over the stale claim of a crashed first attempt must name that attempt's job in the
    payout too, or the provider would see a second id for the same payout."""

    user = add_user(db, partition=0)
    t0 = utcnow()
    idempotency.claim(db, user, "key-p", "fp", "job-first", 24, _response("job-first"),
                      now=t0 - idempotency.STALE_AFTER)
    got = accept_job(db, Payout(user, 1500, "job-retry"), user, partitions=partitions(), ring=lambda *a: None,
                     key="key-p", claim=KeyClaim(user, "fp", 24), job_id="job-retry")
    assert got.job is not None and got.job["_id"] == "job-first"
    assert got.job["params"]["payout_id"] == "job-first"
