"""ledger.write_plan: decided outcomes -> every document write, without a store.

Each effect maps to its one document; a batch maps to ledger records, job outcomes,
deferred credits, the inbound credits marked applied, one sealed audit block, the
guarded partition head and one merged, guarded increment per owned wallet.
"""

from __future__ import annotations

import dataclasses
import typing
from datetime import UTC, datetime, timedelta

import pytest

from ledger import audit
from ledger.decide import Entry, Failed, Settled, failed
from ledger.effects import (
    EFFECT_TYPES,
    Effect,
    EndSubscription,
    ExtendSubscription,
    GrantUnlock,
    HoldPayout,
    MovePayout,
    Reversal,
    RevokeUnlock,
    StartSubscription,
)
from ledger.money import EXTERNAL_FUNDING, PAYOUTS_IN_FLIGHT, PLATFORM_REVENUE
from ledger.operations import partition_of
from ledger.routing import Router, bucket_id
from ledger.states import JobStatus, PayoutStatus, SubscriptionStatus
from ledger.write_plan import COLLECTIONS, PartitionHead, plan_batch
from ledger.writes import BALANCE, BUCKET, FLOOR, HEAD, ROUTING, STATE, BrokenInvariant, Delete, Insert, Update

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PARTS = 4
ROUTER = Router(0, PARTS)
HEAD_0 = PartitionHead(0, seq=7, audit_seq=3, audit_head="h" * 64)


def user_in(partition: int, n: int = 0) -> str:
    """A 24-hex user id owned by ``partition`` (the n-th such id)."""
    found = [f"{i:024x}" for i in range(400) if partition_of(f"{i:024x}", PARTS) == partition]
    return found[n]


ALICE, BOB, CAROL = user_in(0), user_in(0, 1), user_in(2)


def job(job_id: str, kind: str = "transfer", owner: str = ALICE, **params: typing.Any) -> dict[str, typing.Any]:
    return {"_id": job_id, "type": kind, "ownerId": owner, "partition": 0, "requestId": f"req-{job_id}",
            "params": params}


def settled(job_id: str, kind: str, entries: list[tuple[str, int]], effects: tuple = (),
            result: dict | None = None) -> Settled:
    es = tuple(Entry(w, a) for w, a in entries)
    balances = {w: (100, 100 + a) for w, a in entries}
    return Settled(job_id, kind, es, result or {"amount": abs(entries[0][1])}, effects, balances)


# --- every effect -> its document ---------------------------------------------------------

SUB_END = NOW + timedelta(days=30)
EFFECT_DOCS: list[tuple[Effect, str, type, dict[str, typing.Any]]] = [
    (GrantUnlock(ALICE, "c1", CAROL, 250), "unlocks", Insert,
     {"userId": ALICE, "contentId": "c1", "creatorId": CAROL, "price": 250, "jobId": "j1", "createdAt": NOW}),
    (RevokeUnlock(ALICE, "c1"), "unlocks", Delete, {"userId": ALICE, "contentId": "c1"}),
    (StartSubscription("s1", ALICE, CAROL, 300, 30, True, NOW, SUB_END), "subscriptions", Insert,
     {"_id": "s1", "subscriberId": ALICE, "creatorId": CAROL, "price": 300, "periodDays": 30,
      "status": SubscriptionStatus.ACTIVE, "autoRenew": True, "startedAt": NOW, "expiresAt": SUB_END,
      "renewals": 0, "jobId": "j1", "createdAt": NOW}),
    (HoldPayout("p1", ALICE, 500), "payouts", Insert,
     {"_id": "p1", "userId": ALICE, "amount": 500, "status": PayoutStatus.PENDING, "partition": 0,
      "jobId": "j1", "createdAt": NOW, "updatedAt": NOW, "events": []}),
]
GUARDED_EFFECTS: list[tuple[Effect, str, dict[str, typing.Any], dict[str, typing.Any]]] = [
    # On _id alone: the period it renews was read in the batch's transaction (ledger/effects.py).
    (ExtendSubscription("s1", NOW, SUB_END), "subscriptions", {"_id": "s1"},
     {"$set": {"expiresAt": SUB_END, "lastRenewedAt": NOW}, "$inc": {"renewals": 1}}),
    (EndSubscription("s1", "refunded"), "subscriptions", {"_id": "s1", "status": SubscriptionStatus.ACTIVE},
     {"$set": {"status": SubscriptionStatus.EXPIRED, "endedReason": "refunded", "endedAt": NOW}}),
    (MovePayout("p1", PayoutStatus.PENDING, PayoutStatus.PAID, "evt-1"), "payouts",
     {"_id": "p1", "status": PayoutStatus.PENDING},
     {"$set": {"status": PayoutStatus.PAID, "updatedAt": NOW},
      "$push": {"events": {"eventId": "evt-1", "status": PayoutStatus.PAID, "jobId": "j1", "at": NOW}}}),
]


@pytest.mark.parametrize(("effect", "collection", "kind", "doc"), EFFECT_DOCS, ids=lambda v: type(v).__name__)
def test_an_effect_writes_its_document(effect, collection, kind, doc):
    plan = plan_batch(ROUTER, [job("j1")], [settled("j1", "transfer", [(ALICE, -1), (BOB, 1)], (effect,))],
                      {ALICE: -1, BOB: 1}, [], HEAD_0, NOW)
    written = plan.writes[collection]
    assert len(written) == 1 and isinstance(written[0], kind)
    assert (written[0].doc if isinstance(written[0], Insert) else written[0].filter) == doc


@pytest.mark.parametrize(("effect", "collection", "guard", "change"), GUARDED_EFFECTS,
                         ids=lambda v: type(v).__name__)
def test_a_state_change_is_guarded_on_the_state_it_was_decided_from(effect, collection, guard, change):
    plan = plan_batch(ROUTER, [job("j1")], [Failed("j1", "renew", "NO_PLAN", "m", (effect,))], {}, [], HEAD_0, NOW)
    assert plan.writes[collection] == [Update(guard, change, guard=STATE)]


def test_a_reversal_annotates_the_jobs_ledger_fields_and_writes_nothing_else():
    reversal = Reversal("orig-1", ((CAROL, 200), (PLATFORM_REVENUE, 38)), "duplicate")
    plan = plan_batch(ROUTER, [job("r1", "refund")],
                      [settled("r1", "refund", [(BOB, -200), (ALICE, 200)], (reversal,))], {BOB: -200, ALICE: 200},
                      [], HEAD_0, NOW)
    tx = plan.writes["jobs"][0].change["$set"]
    assert (tx["refundOf"], tx["reason"]) == ("orig-1", "duplicate")
    assert tx["refundLegs"] == [{"walletId": CAROL, "amount": 200}, {"walletId": PLATFORM_REVENUE, "amount": 38}]
    assert sum(len(plan.writes[c]) for c in COLLECTIONS) == 1  # the job (its own record), nothing else


def test_every_effect_class_is_mapped_by_these_tests():
    covered = {type(e) for e, *_ in EFFECT_DOCS} | {type(e) for e, *_ in GUARDED_EFFECTS} | {Reversal}
    assert covered == set(EFFECT_TYPES) == set(typing.get_args(Effect))
    for cls in EFFECT_TYPES:
        assert cls.collection in COLLECTIONS, cls


# --- a whole batch ------------------------------------------------------------------------


def test_a_batch_writes_records_outcomes_credits_one_audit_block_the_head_and_merged_wallets():
    jobs = [job("t1"), job("t2"), job("f1")]
    outcomes = [settled("t1", "transfer", [(ALICE, -300), (CAROL, 300)]),  # CAROL: partition 2
                settled("t2", "transfer", [(ALICE, -200), (BOB, 200)]),
                failed("f1", "transfer", "INSUFFICIENT_FUNDS")]
    inbound = [{"_id": "2:5:0", "from": 2, "amounts": [{"walletId": BOB, "amount": 40}]}]
    plan = plan_batch(ROUTER, jobs, outcomes, {ALICE: -500, CAROL: 300, BOB: 200}, inbound, HEAD_0, NOW)

    # Each settled job's one update carries its journal entry; the failed one carries none.
    sets = {w.filter["_id"]: w.change["$set"] for w in plan.writes["jobs"]}
    assert [(j, s["parties"]) for j, s in sets.items() if "entries" in s] == [("t1", sorted([ALICE, CAROL])),
                                                                             ("t2", sorted([ALICE, BOB]))]
    assert all(sum(e["amount"] for e in s["entries"]) == 0 for s in sets.values() if "entries" in s)
    assert not {"entries", "parties"} & set(sets["f1"]) and sets["t1"]["settledAt"] == NOW
    statuses = [w.change["$set"]["status"] for w in plan.writes["jobs"]]
    assert statuses == [JobStatus.SETTLED, JobStatus.SETTLED, JobStatus.FAILED]
    assert all(w.change["$set"]["audit"] == {"partition": 0, "seq": 4} for w in plan.writes["jobs"])

    applied, sent = plan.writes["credits"]
    assert applied == Update({"_id": "2:5:0", "applied": False},
                             {"$set": {"applied": True, "appliedAt": NOW, "appliedIn": 8}}, guard=STATE)
    assert isinstance(sent, Insert) and sent.doc["_id"] == "0:8:2" and sent.doc["to"] == 2
    assert sent.doc["amounts"] == [{"walletId": CAROL, "amount": 300}] and plan.targets == {2}

    block = plan.audit_block
    assert (block["seq"], block["batch"], block["prevHash"]) == (4, 8, HEAD_0.audit_head)
    assert block["hash"] == audit.entry_hash(block, HEAD_0.audit_head)
    assert [r["outcome"] for r in block["jobs"]] == ["settled", "settled", "failed"]
    assert plan.head == Update({"_id": 0, "seq": 7}, {"$set": {"auditSeq": 4, "auditHead": block["hash"],
                                                               "lastSettledAt": NOW}, "$inc": {"seq": 1}}, guard=HEAD)

    wallets = {w.filter["_id"]: w for w in plan.wallets}
    assert set(wallets) == {ALICE, BOB}  # CAROL is another partition's: a credit, not a write
    assert wallets[ALICE].filter == {"_id": ALICE, "balance": {"$gte": 500}} and wallets[ALICE].guard == FLOOR
    assert wallets[BOB].change["$inc"]["balance"] == 240 and wallets[BOB].guard is None
    assert plan.documents == 3 + 2 + 1 + 1 + 2  # jobs (with their records), credits, audit block, head, wallets


def test_system_wallets_are_this_partitions_buckets_the_in_flight_one_guarded():
    plan = plan_batch(ROUTER, [job("p1", "payout_event")],
                      [settled("p1", "payout_event", [(PAYOUTS_IN_FLIGHT, -500), (EXTERNAL_FUNDING, 500)])],
                      {PAYOUTS_IN_FLIGHT: -500, EXTERNAL_FUNDING: 500}, [], HEAD_0, NOW)
    wallets = {w.filter["_id"]: w for w in plan.wallets}
    in_flight, funding = wallets[bucket_id(PAYOUTS_IN_FLIGHT, 0)], wallets[bucket_id(EXTERNAL_FUNDING, 0)]
    assert in_flight.filter["balance"] == {"$gte": 500} and in_flight.guard == BUCKET
    assert funding.upsert and funding.guard is None
    assert funding.change["$setOnInsert"]["partition"] == 0


def test_a_chargeback_lowers_the_floor_by_the_debt_it_may_leave():
    plan = plan_batch(ROUTER, [job("c1", "chargeback"), job("t1")],
                      [settled("c1", "chargeback", [(ALICE, -700), (EXTERNAL_FUNDING, 700)]),
                       settled("t1", "transfer", [(ALICE, -100), (BOB, 100)])],
                      {ALICE: -800, EXTERNAL_FUNDING: 700, BOB: 100}, [], HEAD_0, NOW)
    alice = next(w for w in plan.wallets if w.filter["_id"] == ALICE)
    assert alice.filter["balance"] == {"$gte": 100}  # 800 debited, 700 of it may be debt


def test_a_credit_addressed_to_a_wallet_this_partition_does_not_own_is_refused():
    stray = [{"_id": "1:2:0", "from": 1, "amounts": [{"walletId": CAROL, "amount": 5}]}]
    with pytest.raises(BrokenInvariant) as refused:
        plan_batch(ROUTER, [], [], {}, stray, HEAD_0, NOW)
    assert refused.value.guard == ROUTING


# --- the plan's own assertions, before anything is written ------------------------------------


def test_a_record_that_does_not_sum_to_zero_is_refused_before_writing():
    lopsided = settled("t1", "transfer", [(ALICE, -300), (BOB, 200)])
    with pytest.raises(BrokenInvariant) as refused:
        plan_batch(ROUTER, [job("t1")], [lopsided], {ALICE: -300, BOB: 200}, [], HEAD_0, NOW)
    assert refused.value.guard == BALANCE and "t1" in refused.value.detail


def test_deltas_that_do_not_match_the_outcomes_are_refused_before_writing():
    # Balanced records, but merged deltas that would mint 50 coins for BOB.
    ok = settled("t1", "transfer", [(ALICE, -300), (BOB, 300)])
    with pytest.raises(BrokenInvariant) as refused:
        plan_batch(ROUTER, [job("t1")], [ok], {ALICE: -300, BOB: 350}, [], HEAD_0, NOW)
    assert refused.value.guard == BALANCE


def test_received_credits_are_what_the_batch_may_add():
    inbound = [{"_id": "2:5:0", "from": 2, "amounts": [{"walletId": BOB, "amount": 40}]}]
    plan = plan_batch(ROUTER, [], [], {}, inbound, HEAD_0, NOW)
    assert [w.change["$inc"]["balance"] for w in plan.wallets] == [40]


def test_the_plan_is_built_from_values_only():
    # Frozen write values: a plan cannot be changed behind the runner's back.
    with pytest.raises(dataclasses.FrozenInstanceError):
        Update({}, {}).guard = FLOOR  # type: ignore[misc]
