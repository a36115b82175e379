"""Every guard of the settlement write, fed the stale input it exists for (issue 23, item 3).

The snapshot transaction catches most races before the write does, so a guard can be
deleted with every other test still passing. Here each one gets a write plan built
from state that is no longer true (``ledger.write_plan.plan_batch`` on a stale read)
and must refuse it with nothing written; the same plan on the fresh state is written,
so the refusal is the guard's doing. Real store, no worker: the test is the only settler.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pymongo.errors import OperationFailure

import services.batch_read as batch_read
import services.batch_runner as batch_runner
import services.settlement as settlement
from ledger.decide import Entry, Failed, Settled
from ledger.effects import Effect, EndSubscription, ExtendSubscription, MovePayout
from ledger.money import EXTERNAL_FUNDING, PAYOUTS_IN_FLIGHT
from ledger.operations import Payout, PayoutEvent, Transfer
from ledger.routing import Router, bucket_id
from ledger.states import PayoutStatus, SubscriptionStatus
from ledger.timeutil import utcnow
from ledger.write_plan import PartitionHead, WritePlan, plan_batch
from ledger.writes import BUCKET, FLOOR, BrokenInvariant
from services.batch_write import Conflict, execute
from tests.support.invariants import assert_money_invariants
from tests.support.seeding import add_user, partitions
from tests.support.settle import balances, fund_here, queue_jobs, settle_here


@pytest.fixture
def db(fresh_db: Any) -> Iterator[Any]:
    """A fresh database and NO worker: every write below runs in this process."""
    yield fresh_db


def _head(db: Any, partition: int) -> PartitionHead:
    batch_read.ensure_partition(db, partition)
    return PartitionHead.from_doc(db.partitions.find_one({"_id": partition}))


def _write(db: Any, plan: WritePlan) -> None:
    with db.client.start_session() as session:
        session.with_transaction(lambda s: execute(db, plan, s))


def _stored(db: Any) -> dict[str, Any]:
    """What a refused write must leave as it was."""
    return {name: sorted(map(repr, db[name].find({}, {"lastSettledAt": 0}).sort("_id", 1)))
            for name in ("jobs", "wallets", "credits", "auditlogs", "partitions",
                         "subscriptions", "payouts")}


def _transfer(job: dict[str, Any], sender: str, receiver: str, amount: int) -> tuple[Settled, dict[str, int]]:
    outcome = Settled(job["_id"], "transfer", (Entry(sender, -amount), Entry(receiver, amount)),
                      {"amount": amount, "receiverId": receiver}, (), {})
    return outcome, {sender: -amount, receiver: amount}


def test_the_partition_seq_guard_refuses_a_batch_read_before_another_settler_committed(db):
    sender, receiver = add_user(db, partition=0), add_user(db, partition=0)
    fund_here(db, [sender], 100)
    job = queue_jobs(db, [Transfer(sender, receiver, 30)])[0]
    outcome, deltas = _transfer(job, sender, receiver, 30)
    fresh = _head(db, 0)
    stale = dataclasses.replace(fresh, seq=fresh.seq - 1)  # the audit chain as it is: only seq is stale
    before = _stored(db)
    with pytest.raises(Conflict, match="partition sequence"):
        _write(db, plan_batch(Router(0, partitions()), [job], [outcome], deltas, [], stale, utcnow()))
    assert _stored(db) == before
    _write(db, plan_batch(Router(0, partitions()), [job], [outcome], deltas, [], fresh, utcnow()))
    assert balances(db, [sender, receiver]) == {sender: 70, receiver: 30}
    assert_money_invariants(db)


def test_a_credit_read_as_unapplied_after_its_owner_applied_it_is_not_applied_twice(db):
    payer, owner = add_user(db, partition=0), add_user(db, partition=1)
    fund_here(db, [payer], 100)
    queue_jobs(db, [Transfer(payer, owner, 30)])
    settlement.settle_partition(db, 0, partitions=partitions(), batch_max=200)
    stale_credit = db.credits.find_one({"to": 1, "applied": False})
    settlement.settle_partition(db, 1, partitions=partitions(), batch_max=200)
    assert balances(db, [owner]) == {owner: 30}
    before = _stored(db)
    with pytest.raises(Conflict, match="credits"):
        _write(db, plan_batch(Router(1, partitions()), [], [], {}, [stale_credit], _head(db, 1), utcnow()))
    assert _stored(db) == before and balances(db, [owner]) == {owner: 30}
    assert_money_invariants(db)


def test_the_floor_guard_refuses_a_debit_the_store_cannot_cover_as_a_broken_invariant(db):
    sender, receiver = add_user(db, partition=0), add_user(db, partition=0)
    fund_here(db, [sender], 100)
    job = queue_jobs(db, [Transfer(sender, receiver, 500)])[0]
    outcome, deltas = _transfer(job, sender, receiver, 500)  # approved on a balance the store does not hold
    before = _stored(db)
    with pytest.raises(BrokenInvariant) as refused:
        _write(db, plan_batch(Router(0, partitions()), [job], [outcome], deltas, [], _head(db, 0), utcnow()))
    assert refused.value.guard == FLOOR and sender in refused.value.detail
    assert _stored(db) == before


def _held_payout(db: Any) -> tuple[str, str]:
    creator = add_user(db, partition=2, role="creator")
    fund_here(db, [creator], 5000)
    payout = queue_jobs(db, [Payout(creator, 1200, "x" * 24)])[0]["_id"]
    settle_here(db, 2)
    return creator, payout


def test_the_in_flight_bucket_guard_refuses_to_give_back_more_than_it_holds_as_a_broken_invariant(db):
    creator, payout = _held_payout(db)
    job = queue_jobs(db, [PayoutEvent(creator, payout, "paid", "evt-1")])[0]
    outcome = Settled(job["_id"], "payout_event", (Entry(PAYOUTS_IN_FLIGHT, -2000), Entry(EXTERNAL_FUNDING, 2000)),
                      {"amount": 2000}, (), {})
    before = _stored(db)
    with pytest.raises(BrokenInvariant) as refused:
        _write(db, plan_batch(Router(2, partitions()), [job], [outcome],
                              {PAYOUTS_IN_FLIGHT: -2000, EXTERNAL_FUNDING: 2000}, [], _head(db, 2), utcnow()))
    assert refused.value.guard == BUCKET and bucket_id(PAYOUTS_IN_FLIGHT, 2) in refused.value.detail
    assert _stored(db) == before


def _subscription(db: Any, status: str) -> tuple[str, Any]:
    expires = utcnow().replace(microsecond=0) + timedelta(days=3)
    db.subscriptions.insert_one({"_id": "s" * 24, "subscriberId": "a" * 24, "creatorId": "b" * 24, "price": 300,
                                 "periodDays": 30, "status": status, "autoRenew": True, "expiresAt": expires,
                                 "renewals": 0})
    return "s" * 24, expires


def _stale_effect(db: Any, which: str) -> tuple[Effect, Effect]:
    """(stale, fresh) versions of one guarded state change."""
    if which == "end":
        sub, _ = _subscription(db, SubscriptionStatus.ACTIVE)
        db.subscriptions.update_one({"_id": sub}, {"$set": {"status": SubscriptionStatus.EXPIRED}})
        db.subscriptions.insert_one({"_id": "t" * 24, "status": SubscriptionStatus.ACTIVE})
        return EndSubscription(sub, "refunded"), EndSubscription("t" * 24, "refunded")
    db.payouts.insert_one({"_id": "p" * 24, "userId": "a" * 24, "amount": 5, "status": PayoutStatus.SUBMITTED})
    return (MovePayout("p" * 24, PayoutStatus.PENDING, PayoutStatus.FAILED, "e1"),  # the submitter moved first
            MovePayout("p" * 24, PayoutStatus.SUBMITTED, PayoutStatus.FAILED, "e1"))


# A renewal is filtered on _id alone (ledger/effects.py): its protection is the snapshot,
# tested below with a concurrent change between the batch's read and its write.
@pytest.mark.parametrize("which", ["end", "payout"])
def test_a_state_change_decided_on_a_stale_state_is_refused_as_contention(db, which):
    user = add_user(db, partition=0)
    job = queue_jobs(db, [Transfer(user, add_user(db, partition=0), 5)])[0]
    stale, fresh = _stale_effect(db, which)
    head = _head(db, 0)
    before = _stored(db)
    with pytest.raises(Conflict):
        _write(db, plan_batch(Router(0, partitions()), [job], [Failed(job["_id"], "renew", "X", "m", (stale,))],
                              {}, [], head, utcnow()))
    assert _stored(db) == before
    _write(db, plan_batch(Router(0, partitions()), [job], [Failed(job["_id"], "renew", "X", "m", (fresh,))],
                          {}, [], _head(db, 0), utcnow()))


def test_a_renewal_whose_subscription_changed_after_the_batch_read_it_is_a_write_conflict(db):
    """What replaces the renewal's status/expiresAt predicate: the batch reads the
    subscription inside its transaction, so a tick that expires it before the batch writes
    makes the write conflict (snapshot isolation), and the whole batch is decided again."""
    user = add_user(db, partition=0)
    job = queue_jobs(db, [Transfer(user, add_user(db, partition=0), 5)])[0]
    sub, expires = _subscription(db, SubscriptionStatus.ACTIVE)
    renew = ExtendSubscription(sub, expires, expires + timedelta(days=30))
    plan = plan_batch(Router(0, partitions()), [job], [Failed(job["_id"], "renew", "X", "m", (renew,))],
                      {}, [], _head(db, 0), utcnow())
    with db.client.start_session() as session:
        session.start_transaction()
        assert db.subscriptions.find_one({"_id": sub}, session=session)["status"] == SubscriptionStatus.ACTIVE
        db.subscriptions.update_one({"_id": sub}, {"$set": {"status": SubscriptionStatus.EXPIRED}})  # the tick
        with pytest.raises(OperationFailure) as refused:
            execute(db, plan, session)
        assert refused.value.has_error_label("TransientTransactionError")  # with_transaction retries it
        session.abort_transaction()
    assert db.subscriptions.find_one({"_id": sub})["status"] == SubscriptionStatus.EXPIRED
    assert db.jobs.find_one({"_id": job["_id"]})["status"] == "queued"


# --- the runner: a broken invariant holds the job, counts, logs, and is never retried ---------


def test_a_broken_invariant_holds_its_job_settles_the_rest_and_is_not_retried(db, monkeypatch, caplog):
    """The offender's wallet is read stale on every attempt: the store's floor refuses the debit."""
    offender, good, receiver = (add_user(db, partition=0) for _ in range(3))
    fund_here(db, [offender, good], 100)
    bad_job, good_job = queue_jobs(db, [Transfer(offender, receiver, 500), Transfer(good, receiver, 40)])
    real, calls = batch_runner.load_snapshot, {"n": 0}

    def stale(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        snap = real(*args, **kwargs)
        if offender in snap.wallets:
            snap.wallets[offender].balance = 1000
        return snap

    counted = REGISTRY.get_sample_value("purser_settle_broken_invariants_total", {"guard": FLOOR}) or 0.0
    monkeypatch.setattr(batch_runner, "load_snapshot", stale)
    with caplog.at_level(logging.ERROR, logger="purser.settlement"):
        drained = settlement.settle_partition(db, 0, partitions=partitions(), batch_max=200)
    # The batch once, then each job alone once: no conflict retry of a broken invariant.
    assert calls["n"] == 3
    assert drained.held == [bad_job["_id"]] and not drained.more and drained.settled == 1
    assert db.jobs.find_one({"_id": bad_job["_id"]})["status"] == "queued"
    assert db.jobs.find_one({"_id": good_job["_id"]})["status"] == "settled"
    assert balances(db, [offender, good, receiver]) == {offender: 100, good: 60, receiver: 40}
    assert REGISTRY.get_sample_value("purser_settle_broken_invariants_total", {"guard": FLOOR}) == counted + 2
    held = [r for r in caplog.records if getattr(r, "jobId", None) == bad_job["_id"]]
    assert [(r.levelno, r.guard) for r in held] == [(logging.ERROR, FLOOR)]
    monkeypatch.undo()
    # Read right again, the held job is decided on what the store holds.
    settlement.settle_partition(db, 0, partitions=partitions(), batch_max=200)
    assert db.jobs.find_one({"_id": bad_job["_id"]})["error"]["code"] == "INSUFFICIENT_FUNDS"
    assert_money_invariants(db)
