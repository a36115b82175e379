"""Migration 0010 (issue 24, lever 4): ledger records move onto their jobs and back.

A store populated by the real settler (top-ups with provider ids, transfers across
partitions, a gift, an unlock and its refunds, a chargeback that leaves debt, a
payout, a failed transfer) goes down -> up -> down -> up. Reconcile and the audit
verifier agree at every step, the wallet history answers the same pages, a down
rebuilds the same ``transactions`` bytes every time, and an up gives the jobs back
field for field. A record older code wrote differently survives the round trip as written.
"""

from __future__ import annotations

from typing import Any

from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument

import migrations
from ledger.operations import Chargeback, Gift, Payout, Refund, TopUp, Transfer, Unlock
from services import journal
from services.queries import wallet_history
from services.reconcile import reconcile, verify_audit
from services.refunds import refunds_of
from tests.support.seeding import add_user
from tests.support.settle import apply_credits_here, fund_here, queue_jobs, settle_here

TEN = 10
RAW = CodecOptions(document_class=RawBSONDocument)


def _settle(db: Any, ops: list[Any]) -> list[dict[str, Any]]:
    jobs = queue_jobs(db, ops)
    for p in sorted({j["partition"] for j in jobs}):
        settle_here(db, p)
    apply_credits_here(db)
    return jobs


def _populate(db: Any) -> dict[str, Any]:
    fan, friend = add_user(db, partition=0), add_user(db, partition=1)
    creator = add_user(db, partition=2, role="creator")
    fund_here(db, [fan], 2000)
    content = "c" * 24
    db.contents.insert_one({"_id": content, "creatorId": creator, "title": "t", "price": 99, "isActive": True})
    topup, *_ = _settle(db, [TopUp(friend, 700, "pi_one"), TopUp(fan, 300, "pi_two")])
    gift, unlock = _settle(db, [Gift(fan, creator, 120), Unlock(fan, content)])
    _settle(db, [Transfer(fan, friend, 50), Transfer(friend, fan, 5_000_000), Payout(creator, 20, "x" * 24)])
    _settle(db, [Refund(creator, unlock["_id"], 50, "requested_by_customer"), Refund(creator, gift["_id"], None,
                                                                                      "duplicate")])
    _settle(db, [Transfer(friend, creator, 650), Chargeback(friend, 700, "pi_one", "dp_1")])
    return {"users": [fan, friend, creator], "unlock": unlock["_id"], "topup": topup["_id"]}


def _pages(db: Any, user: str) -> list[Any]:
    pages, cursor = [], None
    while True:
        items, cursor = wallet_history(db, user, 2, cursor)
        pages.append((items, cursor))
        if cursor is None:
            return pages


def _answers(db: Any, seeded: dict[str, Any]) -> dict[str, Any]:
    rec, chains = reconcile(db), verify_audit(db)
    assert rec.ok and chains.ok, (rec.as_dict(), chains.as_dict())
    return {"reconcile": rec.as_dict(), "audit": chains.as_dict(),
            "history": {u: _pages(db, u) for u in seeded["users"]},
            "refunds": refunds_of(db, seeded["unlock"]), "chargebacks": refunds_of(db, seeded["topup"])}


def _raw(db: Any, name: str) -> list[bytes]:
    return [doc.raw for doc in db.get_collection(name, codec_options=RAW).find({}).sort("_id", 1)]


def test_down_up_down_up_on_a_settled_store_keeps_the_ledger_and_its_answers(fresh_db):
    db = fresh_db
    seeded = _populate(db)
    assert "transactions" not in db.list_collection_names()
    settled = db.jobs.count_documents({"status": "settled"})
    assert db.jobs.count_documents({"status": "failed"}) == 1
    answers, jobs = _answers(db, seeded), list(db.jobs.find({}).sort("_id", 1))
    assert seeded["users"][1] in answers["reconcile"]["debt"]

    assert migrations.down(db, to=TEN - 1) == [TEN]
    records = _raw(db, "transactions")
    assert len(records) == settled and db.jobs.count_documents({"entries": {"$exists": True}}) == 0
    first = db.transactions.find_one({"providerTxId": "pi_two"})
    assert list(first) == ["_id", "txId", "jobId", "type", "ownerId", "partition", "auditSeq", "entries",
                           "parties", "requestId", "createdAt", "providerTxId"]  # the old write plan's order
    refund = db.transactions.find_one({"refundOf": seeded["unlock"]})
    assert list(refund)[-3:] == ["refundOf", "refundLegs", "reason"]
    assert {"parties_recent", "providerTxId_unique", "refund_of"} <= set(db.transactions.index_information())
    assert not {"parties_settled", "providerTxId_unique", "refund_of"} & set(db.jobs.index_information())
    olds = list(db.transactions.find({}))
    assert {t["_id"] for t in olds} == {j["_id"] for j in db.jobs.find({"status": "settled"}, {"_id": 1})}
    assert all(sum(e["amount"] for e in t["entries"]) == 0 and t["createdAt"] is not None for t in olds)

    for _ in range(2):
        assert migrations.up(db) == [TEN]
        assert "transactions" not in db.list_collection_names()
        # The jobs hold what the settler wrote (field for field; $set appends the ledger fields last).
        assert list(db.jobs.find({}).sort("_id", 1)) == jobs
        assert _answers(db, seeded) == answers
        assert migrations.down(db, to=TEN - 1) == [TEN]
        assert _raw(db, "transactions") == records
    assert migrations.up(db) == [TEN]
    assert _answers(db, seeded) == answers


def test_a_record_older_code_wrote_differently_comes_back_as_written(fresh_db):
    db = fresh_db
    fan = add_user(db, partition=0)
    fund_here(db, [fan], 100)
    assert migrations.down(db, to=TEN - 1) == [TEN]
    job_id = db.transactions.find_one({})["_id"]
    legacy = db.transactions.find_one({"_id": job_id})
    legacy = {k: legacy[k] for k in ("_id", "txId", "jobId", "type", "ownerId", "entries", "parties",
                                     "requestId", "createdAt")}  # no partition, no auditSeq: pre-0004
    db.transactions.replace_one({"_id": job_id}, legacy)
    before = _raw(db, "transactions")
    assert migrations.up(db) == [TEN]
    assert journal.find_one(db, {"_id": job_id})["entries"] == legacy["entries"]
    assert reconcile(db).ok
    assert migrations.down(db, to=TEN - 1) == [TEN]
    assert _raw(db, "transactions") == before
