"""The read room of settlement: exactly the state one batch of one partition touches.

Everything here runs inside the batch's transaction (``session``), so what is read
stays what the write is checked against (snapshot isolation). The pure decision
(``ledger/decide.py``) and the write plan (``ledger/write_plan.py``) see only what
these functions return.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from pymongo.client_session import ClientSession
from pymongo.database import Database

from ledger import audit
from ledger.decide import ContentInfo, Original, PayoutState, Plan, Snapshot, SubscriptionState, WalletState
from ledger.money import SYSTEM_WALLETS, is_system_wallet
from ledger.operations import Operation, Reads, from_params
from ledger.routing import Router
from ledger.states import ACTIVE, JobStatus, SubscriptionStatus
from ledger.write_plan import PartitionHead
from services import journal

# Inbound credit documents applied per batch: bounds the transaction, not correctness
# (the rest are applied by the next batch, which the drain loop runs at once).
CREDIT_BATCH_MAX = 500


class PoisonJob(Exception):
    """A job whose parameters cannot be turned into an operation."""


def ensure_partition(db: Database, partition: int) -> None:
    """Create the partition's head document once (a read when it exists).

    The partition's system-wallet buckets are created by the migration and, for a
    partition added later, upserted by its own first batch (their only writer).
    """
    if db.partitions.find_one({"_id": partition}, {"_id": 1}) is None:
        db.partitions.update_one(
            {"_id": partition},
            {"$setOnInsert": {"seq": 0, "auditSeq": 0, "auditHead": audit.GENESIS}},
            upsert=True,
        )


def queued(db: Database, partition: int, limit: int, session: ClientSession | None,
           skip: Collection[str] = ()) -> list[dict]:
    """The partition's queued jobs in acceptance order, but for ``skip`` (jobs held this drain)."""
    query: dict[str, Any] = {"partition": partition, "status": JobStatus.QUEUED}
    if skip:
        query["_id"] = {"$nin": sorted(skip)}
    cursor = (
        db.jobs.find(query, session=session)
        .sort([("createdAt", 1), ("_id", 1)])
        .limit(limit)
    )
    return list(cursor)


def inbound(db: Database, partition: int, session: ClientSession | None) -> list[dict]:
    """Deferred credits addressed to ``partition`` and not applied yet, oldest first."""
    return list(db.credits.find({"to": partition, "applied": False}, session=session)
                .sort([("createdAt", 1), ("_id", 1)]).limit(CREDIT_BATCH_MAX))


def has_queued(db: Database, partition: int) -> bool:
    return db.jobs.find_one({"partition": partition, "status": JobStatus.QUEUED}, {"_id": 1}) is not None


def operation_of(job: dict[str, Any]) -> Operation:
    try:
        return from_params(job["type"], job["params"])
    except Exception as exc:  # noqa: BLE001 - any malformed job is poison
        raise PoisonJob(f"job {job['_id']}: {exc}") from exc


def load_snapshot(db: Database, ops: Sequence[Operation], router: Router,
                  session: ClientSession | None = None, extra_wallets: Sequence[str] = ()) -> Snapshot:
    """Read exactly the state that ``ops`` can touch (each operation declares its reads).

    System wallets appear under their own names with this partition's bucket
    balance. Wallets owned by other partitions are read for their status only (a
    receiver must exist and not be frozen); their balance is never written here.
    """
    reads = Reads(wallets=set(extra_wallets))
    for op in ops:
        reads.update(op.reads())

    snap = Snapshot()
    if reads.contents:
        for doc in db.contents.find({"_id": {"$in": sorted(reads.contents)}}, session=session):
            snap.contents[doc["_id"]] = ContentInfo(doc["_id"], doc["creatorId"], doc["price"],
                                                    bool(doc.get("isActive", True)))
            reads.wallets.add(doc["creatorId"])
    if reads.unlocks:
        # One index range on the leading field; two $in fields at once are answered
        # with a collection scan by some planners (SecantusDB's among them).
        for doc in db.unlocks.find({"userId": {"$in": sorted({u for u, _ in reads.unlocks})}},
                                   {"userId": 1, "contentId": 1}, session=session):
            if (doc["userId"], doc["contentId"]) in reads.unlocks:
                snap.unlocks.add((doc["userId"], doc["contentId"]))

    _load_reversible(db, reads, snap, session)
    if reads.payouts:
        for doc in db.payouts.find({"_id": {"$in": sorted(reads.payouts)}}, session=session):
            snap.payouts[doc["_id"]] = PayoutState(doc["_id"], doc["userId"], doc["amount"], doc["status"])

    sub_docs: list[dict[str, Any]] = []
    if reads.subscriptions:
        sub_docs += db.subscriptions.find({"_id": {"$in": sorted(reads.subscriptions)}}, session=session)
    if reads.subscriber_pairs:
        # The subscribers' subscriptions by the index's leading field, narrowed here.
        creators = {c for _, c in reads.subscriber_pairs}
        sub_docs += [doc for doc in db.subscriptions.find(
            {"subscriberId": {"$in": sorted({s for s, _ in reads.subscriber_pairs})}}, session=session)
            if doc["status"] == SubscriptionStatus.ACTIVE and doc["creatorId"] in creators]
    for doc in sub_docs:
        snap.subscriptions[doc["_id"]] = SubscriptionState(
            doc["_id"], doc["subscriberId"], doc["creatorId"], doc["price"], doc["periodDays"],
            doc["status"], bool(doc.get("autoRenew")), doc["expiresAt"], doc.get("renewals", 0))
    for sub in snap.subscriptions.values():
        reads.plans.add(sub.creator_id)
        reads.wallets.add(sub.creator_id)

    if reads.plans:
        for doc in db.plans.find({"_id": {"$in": sorted(reads.plans)}}, session=session):
            snap.plans[doc["_id"]] = Plan(doc["_id"], doc["price"], doc["periodDays"],
                                          bool(doc.get("isActive", True)))

    user_ids = sorted(w for w in reads.wallets if not is_system_wallet(w))
    buckets = {router.doc_id(w): w for w in SYSTEM_WALLETS}
    for doc in db.wallets.find({"_id": {"$in": user_ids + sorted(buckets)}}, {"balance": 1, "status": 1},
                               session=session):
        name = buckets.get(doc["_id"], doc["_id"])
        snap.wallets[name] = WalletState(doc["balance"], doc.get("status", ACTIVE))
    for name in SYSTEM_WALLETS:
        snap.wallets.setdefault(name, WalletState(0))  # a bucket its first batch creates
    return snap


def _load_reversible(db: Database, reads: Reads, snap: Snapshot, session: ClientSession | None) -> None:
    """Originals being refunded (by job id) and top-ups being charged back (by provider id),
    with what earlier refunds or chargebacks already took back from each leg."""
    # A settled job is its ledger record (services/journal.py): one read brings the
    # original's entries and its result.
    fields = ["type", "entries", "providerTxId", "result"]
    txs: list[dict[str, Any]] = []
    if reads.originals:
        txs += journal.ledger(db).find({"_id": {"$in": sorted(reads.originals)}, **journal.HAS_ENTRIES},
                                       dict.fromkeys(fields, 1), session=session)
    if reads.topups:
        txs += journal.ledger(db).find({"providerTxId": {"$in": sorted(reads.topups)}},
                                       dict.fromkeys(fields, 1), session=session)
    if not txs:
        return
    ids = sorted({tx["_id"] for tx in txs})
    reversed_: dict[str, dict[str, int]] = {}
    for prior in journal.find(db, {"refundOf": {"$in": ids}}, ["refundOf", "refundLegs"], session=session):
        legs = reversed_.setdefault(prior["refundOf"], {})
        for row in prior.get("refundLegs", []):
            legs[row["walletId"]] = legs.get(row["walletId"], 0) + row["amount"]
    for tx in txs:
        payer = next((e["walletId"] for e in tx["entries"] if e["amount"] < 0), "")
        legs = tuple((e["walletId"], e["amount"]) for e in tx["entries"] if e["amount"] > 0)
        original = Original(tx["_id"], tx["type"], payer, legs, tx.get("result") or {},
                            dict(reversed_.get(tx["_id"], {})))
        if tx["type"] == "topup" and tx.get("providerTxId") in reads.topups:
            snap.topups[tx["providerTxId"]] = original
        if tx["_id"] in reads.originals:
            snap.originals[tx["_id"]] = original
            sub_id = original.result.get("subscriptionId")
            if sub_id and original.kind in ("subscribe", "renew"):
                reads.subscriptions.add(sub_id)


def queued_job(db: Database, job_id: str, session: ClientSession | None) -> list[dict]:
    """The one job an isolation run settles alone, while it is still queued."""
    return list(db.jobs.find({"_id": job_id, "status": JobStatus.QUEUED}, session=session))


def partition_head(db: Database, partition: int, session: ClientSession | None) -> PartitionHead | None:
    """The partition document the batch's write is guarded by (its ``seq``)."""
    doc = db.partitions.find_one({"_id": partition}, session=session)
    return None if doc is None else PartitionHead.from_doc(doc)
