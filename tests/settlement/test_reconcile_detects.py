"""Reconcile and audit verification catch what they claim to (issue 17, item 3).

Every invariant check in the suites ends in ``services.reconcile``; here the checker
itself is tested. A small history is settled in this process on a real store (no
worker: nothing moves meanwhile), checked clean, then corrupted ONE way per test,
and the matching finding must appear.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ledger.operations import Transfer
from services.reconcile import reconcile, verify_audit
from services.settlement import settle_partition
from tests.support.journal import ledger_record
from tests.support.seeding import add_user, partitions
from tests.support.settle import fund_here, queue_jobs


@pytest.fixture
def db(fresh_db: Any) -> Iterator[Any]:
    """A fresh database and NO worker: every settle below runs in this process."""
    yield fresh_db


@dataclass
class History:
    sender: str     # partition 0, funded 100, sent 30
    receiver: str   # partition 1, owed 30 by an unapplied credit
    settled_job: str
    failed_job: str
    credit_id: Any


@pytest.fixture
def history(db: Any) -> History:
    sender, receiver = add_user(db, partition=0), add_user(db, partition=1)
    fund_here(db, [sender], 100)
    ok, too_much = queue_jobs(db, [Transfer(sender, receiver, 30), Transfer(sender, receiver, 10_000)])
    settle_partition(db, 0, partitions=partitions(), batch_max=200)  # partition 1 not settled: credit pending
    jobs = {j["_id"]: j for j in db.jobs.find({"_id": {"$in": [ok["_id"], too_much["_id"]]}})}
    assert jobs[ok["_id"]]["status"] == "settled" and jobs[too_much["_id"]]["status"] == "failed"
    credit = db.credits.find_one({"to": 1, "applied": False})
    assert credit is not None and credit["amounts"] == [{"walletId": receiver, "amount": 30}]
    clean = reconcile(db)
    assert clean.ok and clean.unapplied_credits == 30, clean.as_dict()
    assert verify_audit(db).ok, verify_audit(db).as_dict()
    return History(sender, receiver, ok["_id"], too_much["_id"], credit["_id"])


def test_sum_not_zero_is_reported(db, history):
    db.wallets.update_one({"_id": history.receiver}, {"$inc": {"balance": 5}})
    report = reconcile(db)
    assert not report.ok
    assert report.total_balance == 5
    assert report.drift[history.receiver] == {"balance": 5, "incoming": 30, "ledger": 30}


def test_negative_user_wallet_is_reported(db, history):
    # Balance and ledger both moved so nothing but the sign is wrong for this wallet.
    db.wallets.update_one({"_id": history.sender}, {"$set": {"balance": -1}})
    report = reconcile(db)
    assert not report.ok
    assert report.negative == [history.sender]


def test_unbalanced_transaction_is_reported(db, history):
    tx = ledger_record(db, {"_id": history.settled_job})
    assert tx is not None
    db.jobs.update_one({"_id": history.settled_job}, {"$inc": {"entries.0.amount": 1}})
    report = reconcile(db)
    assert not report.ok
    assert report.unbalanced_transactions == [history.settled_job]


def test_settled_job_without_entries_is_reported(db, history):
    # A failed job relabelled settled: it carries no ledger entries (nothing else changes).
    db.jobs.update_one({"_id": history.failed_job}, {"$set": {"status": "settled"}})
    report = reconcile(db)
    assert not report.ok
    assert report.jobs_without_outcome == [history.failed_job]
    assert not report.drift and not report.unbalanced_transactions and report.total_balance == 0


def test_entries_on_a_job_no_longer_settled_are_reported(db, history):
    db.jobs.update_one({"_id": history.settled_job}, {"$set": {"status": "failed"}})
    report = reconcile(db)
    assert not report.ok
    assert report.jobs_without_outcome == [history.settled_job]
    assert not report.drift and not report.unbalanced_transactions and report.total_balance == 0


def test_entries_on_a_failed_job_are_reported(db, history):
    # A record can no longer point at another job (it is the job); the nearest forgery is
    # balanced entries written onto a failed job: they move no balance the ledger knows of.
    entries = [{"walletId": history.sender, "amount": -1}, {"walletId": history.receiver, "amount": 1}]
    db.jobs.update_one({"_id": history.failed_job}, {"$set": {"entries": entries, "parties": []}})
    report = reconcile(db)
    assert not report.ok
    assert history.failed_job in report.jobs_without_outcome


def test_altered_unapplied_credit_is_drift(db, history):
    db.credits.update_one({"_id": history.credit_id}, {"$inc": {"amounts.0.amount": 1}})
    report = reconcile(db)
    assert not report.ok
    assert report.drift == {history.receiver: {"balance": 0, "incoming": 31, "ledger": 30}}
    assert report.total_balance == 1


def test_applied_flag_flipped_on_pending_credit_is_drift(db, history):
    db.credits.update_one({"_id": history.credit_id}, {"$set": {"applied": True}})
    report = reconcile(db)
    assert not report.ok
    assert report.drift == {history.receiver: {"balance": 0, "incoming": 0, "ledger": 30}}
    assert report.total_balance == -30


def test_altered_bucket_is_drift(db, history):
    bucket = db.wallets.find_one({"system": {"$exists": True}, "balance": {"$ne": 0}})
    assert bucket is not None, "funding moved money out of a system bucket"
    db.wallets.update_one({"_id": bucket["_id"]}, {"$inc": {"balance": 7}})
    report = reconcile(db)
    assert not report.ok
    assert len(report.drift) == 1
    (name, figures), = report.drift.items()
    assert name.startswith(bucket["system"] + "#")
    assert figures["balance"] - figures["ledger"] == 7
    assert report.total_balance == 7


def test_broken_audit_link_is_reported(db, history):
    entry = db.auditlogs.find_one({"partition": 0}, sort=[("seq", 1)])
    assert entry is not None
    db.auditlogs.update_one({"_id": entry["_id"]}, {"$set": {"prevHash": "f" * 64}})
    report = verify_audit(db)
    assert not report.ok
    assert report.partitions[0].ok is False and report.partitions[0].broken_at == entry["seq"]


def test_edited_audit_content_is_reported(db, history):
    last = db.auditlogs.find_one({"partition": 0}, sort=[("seq", -1)])
    assert last is not None and "jobs" in last
    db.auditlogs.update_one({"_id": last["_id"]}, {"$set": {"at": "2000-01-01T00:00:00.000Z"}})
    report = verify_audit(db)
    assert not report.ok
    assert report.partitions[0].broken_at == last["seq"]


def test_job_audit_pointer_moved_is_reported(db, history):
    db.jobs.update_one({"_id": history.settled_job}, {"$inc": {"audit.seq": 1}})
    report = verify_audit(db)
    assert not report.ok
    assert history.settled_job in report.missing


def test_terminal_job_without_audit_pointer_is_reported(db, history):
    db.jobs.update_one({"_id": history.failed_job}, {"$unset": {"audit": ""}})
    report = verify_audit(db)
    assert not report.ok
    assert history.failed_job in report.missing


def test_truncated_chain_with_its_head_count_rewound_is_reported(db, history):
    # The last block deleted and the head's count moved back to match: every remaining
    # link verifies, only the head's hash (of the deleted block) gives it away.
    head = db.partitions.find_one({"_id": 0})
    assert head["auditSeq"] >= 2
    db.auditlogs.delete_one({"partition": 0, "seq": head["auditSeq"]})
    db.partitions.update_one({"_id": 0}, {"$inc": {"auditSeq": -1}})
    report = verify_audit(db)
    assert not report.ok
    assert report.partitions[0].reason == "chain head does not match the partition"
