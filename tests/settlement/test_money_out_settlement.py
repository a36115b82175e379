"""Issue 14 through real settlement (in process, real store): holds, refunds, chargebacks.

Expected amounts are written out by hand from the 8000/1500/500 split.
"""

from __future__ import annotations

from typing import Any

from ledger.money import PAYOUTS_IN_FLIGHT
from ledger.operations import Chargeback, Gift, Payout, PayoutEvent, Refund, TopUp, Transfer, Unlock
from services.queries import audit_entry_of
from services.reconcile import reconcile
from services.settlement import settle_partition
from tests.support.invariants import assert_money_invariants
from tests.support.journal import count_records, ledger_record, ledger_records
from tests.support.load import fire
from tests.support.seeding import add_user, partitions
from tests.support.settle import apply_credits_here, balances, fund_here, queue_jobs, system_balances


def _settle_all(db: Any) -> None:
    for p in range(partitions()):
        settle_partition(db, p, partitions=partitions(), batch_max=200)
    apply_credits_here(db)


def _job(db: Any, job_id: str) -> dict[str, Any]:
    return db.jobs.find_one({"_id": job_id})


def test_a_payout_holds_then_posts_and_a_failed_one_gives_the_money_back(db):
    creator = add_user(db, partition=2, role="creator")
    fund_here(db, [creator], 5000)
    # The payout id is the job's id, whatever the operation was built with (build_job stamps it).
    a, b = (j["_id"] for j in queue_jobs(db, [Payout(creator, 1200, "x" * 24), Payout(creator, 1300, "x" * 24)]))
    _settle_all(db)
    assert balances(db, [creator])[creator] == 2500
    assert system_balances(db)[PAYOUTS_IN_FLIGHT] == 2500
    assert {p["_id"]: p["status"] for p in db.payouts.find({})} == {a: "pending", b: "pending"}

    queue_jobs(db, [PayoutEvent(creator, a, "paid", "evt-1"), PayoutEvent(creator, b, "failed", "evt-2"),
                    PayoutEvent(creator, a, "paid", "evt-3")])  # a second "paid": moves nothing
    _settle_all(db)
    assert balances(db, [creator])[creator] == 3800
    totals = system_balances(db)
    assert totals[PAYOUTS_IN_FLIGHT] == 0 and totals["external:funding"] == -5000 + 1200
    assert {p["_id"]: p["status"] for p in db.payouts.find({})} == {a: "paid", b: "failed"}
    dup = db.jobs.find_one({"type": "payout_event", "params.event_id": "evt-3"})
    assert dup["status"] == "failed" and dup["error"]["code"] == "PAYOUT_STATE_CONFLICT"
    assert audit_entry_of(db, dup["_id"])[1]["code"] == "PAYOUT_STATE_CONFLICT"  # recorded

    # Paid, then the bank returns it: a new compensating credit, the posted entries untouched.
    queue_jobs(db, [PayoutEvent(creator, a, "returned", "evt-4")])
    _settle_all(db)
    assert balances(db, [creator])[creator] == 5000
    assert count_records(db, {"type": "payout_event"}) == 3
    assert_money_invariants(db)


def test_partial_then_full_refund_of_an_unlock_gives_back_exactly_the_price(db):
    fan, creator = add_user(db, partition=0), add_user(db, partition=1, role="creator")
    fund_here(db, [fan], 1000)
    content = "c" * 24
    db.contents.insert_one({"_id": content, "creatorId": creator, "title": "t", "price": 99, "isActive": True})
    unlock = queue_jobs(db, [Unlock(fan, content)])[0]
    _settle_all(db)
    assert balances(db, [fan, creator]) == {fan: 901, creator: 79}  # 79 / 15 / 5

    # 50 of 99: creator 40, revenue 8, processing 2 (39.9 / 7.58 / 2.53, two leftovers by remainder).
    partial = queue_jobs(db, [Refund(creator, unlock["_id"], 50, "requested_by_customer")])[0]
    _settle_all(db)
    assert _job(db, partial["_id"])["result"]["legs"] == {creator: 40, "platform:revenue": 8,
                                                          "platform:processing": 2}
    assert balances(db, [fan, creator]) == {fan: 951, creator: 39}
    assert db.unlocks.count_documents({"userId": fan, "contentId": content}) == 1

    rest, too_much = queue_jobs(db, [Refund(creator, unlock["_id"], None, "requested_by_customer"),
                                     Refund(creator, unlock["_id"], 1, "duplicate")])
    _settle_all(db)
    assert _job(db, rest["_id"])["result"]["legs"] == {creator: 39, "platform:revenue": 7,
                                                       "platform:processing": 3}
    assert _job(db, too_much["_id"])["error"]["code"] == "REFUND_EXCEEDS_ORIGINAL"
    assert balances(db, [fan, creator]) == {fan: 1000, creator: 0}
    assert db.unlocks.count_documents({"userId": fan, "contentId": content}) == 0  # revoked
    refunds = list(ledger_records(db, {"refundOf": unlock["_id"]}))
    assert sorted(sum(e["amount"] for e in r["entries"] if e["walletId"] == fan) for r in refunds) == [49, 50]
    assert_money_invariants(db)


def test_twenty_concurrent_partial_refunds_never_exceed_the_original(db):
    fan, creator = add_user(db, partition=0), add_user(db, partition=3, role="creator")
    fund_here(db, [fan], 1000)
    gift = queue_jobs(db, [Gift(fan, creator, 100)])[0]
    _settle_all(db)
    queue_jobs(db, [Refund(creator, gift["_id"], 7, "duplicate") for _ in range(20)])
    # Four settlers of the refunds' partition at once: they conflict, one wins each batch.
    fire(lambda _: settle_partition(db, 3, partitions=partitions(), batch_max=3), range(4), workers=4)
    apply_credits_here(db)
    refunds = list(db.jobs.find({"type": "refund"}))
    settled = [j for j in refunds if j["status"] == "settled"]
    assert len(settled) == 14  # 14 x 7 = 98 <= 100 < 15 x 7
    assert {j["error"]["code"] for j in refunds if j["status"] == "failed"} == {"REFUND_EXCEEDS_ORIGINAL"}
    assert balances(db, [fan])[fan] == 900 + 98
    assert_money_invariants(db)


def test_a_chargeback_leaves_debt_that_blocks_debits_until_a_credit_repays_it(db):
    fan, friend = add_user(db, partition=1), add_user(db, partition=1)
    topup = queue_jobs(db, [TopUp(fan, 500, "pi_dispute")])[0]
    _settle_all(db)
    spend = queue_jobs(db, [Transfer(fan, friend, 400)])[0]
    _settle_all(db)
    assert _job(db, spend["_id"])["status"] == "settled"

    back = queue_jobs(db, [Chargeback(fan, 500, "pi_dispute", "dp_1"), Transfer(fan, friend, 1)])
    _settle_all(db)
    assert _job(db, back[0]["_id"])["status"] == "settled"
    assert _job(db, back[1]["_id"])["error"]["code"] == "INSUFFICIENT_FUNDS"
    assert balances(db, [fan])[fan] == -400
    rec = reconcile(db)
    assert rec.ok and rec.debt == [fan], rec.as_dict()  # debt, reported, not an error
    assert ledger_record(db, {"refundOf": topup["_id"]})["type"] == "chargeback"

    queue_jobs(db, [TopUp(fan, 450, "pi_later"), Transfer(fan, friend, 50)])
    _settle_all(db)
    assert balances(db, [fan, friend]) == {fan: 0, friend: 450}
    assert_money_invariants(db)
