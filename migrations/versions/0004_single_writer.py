"""Single-writer settlement: system-wallet buckets, deferred credits, a leaner write path.

- ``credits``: insert-only deferred credits addressed to the partition that owns the
  credited wallet (index ``inbound`` on ``to, applied, createdAt``).
- System wallets become one bucket per partition (``platform:revenue#3``). Each
  bucket's balance is the sum of that system wallet's ledger entries in the
  transactions of that partition, so every bucket reconciles on its own; ``up``
  refuses to run if those sums do not add up to the old balance (reconcile first).
- Indexes that duplicated ``_id`` go (``wallets.userId_*``, ``transactions.txId_unique``
  / ``jobId_unique``, ``auditlogs.txId_recent`` / ``entity`` / ``actor``): SecantusDB
  rewrites every index entry of a document it writes. Wallet history moves from the
  multikey ``entries.walletId`` index (one entry per leg, system legs included) to
  ``parties`` (user wallets only).
- Audit: new batches write one block per batch; jobs point at their block
  (``audit: {partition, seq}``). Jobs settled before this migration get the pointer
  to their per-job entry, so verification treats both shapes alike.

``down`` restores the old indexes and folds the buckets back into one document per
system wallet. It refuses while deferred credits are unapplied (drain first). Audit
blocks written in between stay in the chains (they cannot be rewritten without
breaking the hashes).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo import ASCENDING as A
from pymongo import DESCENDING as D
from pymongo import IndexModel, UpdateOne
from pymongo.database import Database
from pymongo.errors import OperationFailure

SYSTEM_WALLETS = ("platform:revenue", "platform:processing", "external:funding")
CHUNK = 1000

NEW_INDEXES = {
    "credits": [IndexModel([("to", A), ("applied", A), ("createdAt", A)], name="inbound")],
    "transactions": [IndexModel([("parties", A), ("createdAt", D)], name="parties_recent")],
}
OLD_INDEXES = {
    "wallets": [
        IndexModel([("userId", A)], name="userId_unique", unique=True),
        IndexModel([("userId", A), ("status", A)], name="userId_status"),
    ],
    "transactions": [
        IndexModel([("txId", A)], name="txId_unique", unique=True),
        IndexModel([("jobId", A)], name="jobId_unique", unique=True),
        IndexModel([("entries.walletId", A), ("createdAt", D)], name="wallet_history"),
    ],
    "auditlogs": [
        IndexModel([("txId", A), ("createdAt", D)], name="txId_recent"),
        IndexModel([("entity.type", A), ("entity.id", A)], name="entity"),
        IndexModel([("actor.id", A)], name="actor"),
    ],
}


class MigrationRefused(RuntimeError):
    pass


def _drop(db: Database, collection: str, name: str) -> None:
    try:
        db[collection].drop_index(name)
    except OperationFailure:
        pass  # already gone


def _flush(collection, ops: list) -> None:  # type: ignore[no-untyped-def]
    if ops:
        collection.bulk_write(ops, ordered=False)
        ops.clear()


def _bucket_sums(db: Database, wallet_id: str) -> dict[int, int]:
    sums: dict[int, int] = {}
    for tx in db.transactions.find({"entries.walletId": wallet_id}, {"entries": 1, "partition": 1}):
        for entry in tx["entries"]:
            if entry["walletId"] == wallet_id:
                sums[int(tx["partition"])] = sums.get(int(tx["partition"]), 0) + entry["amount"]
    return sums


def up(db: Database) -> None:
    now = datetime.now(UTC)
    if "credits" not in db.list_collection_names():
        db.create_collection("credits")
    for name, indexes in NEW_INDEXES.items():
        db[name].create_indexes(indexes)

    # System wallets -> per-partition buckets, each equal to its partition's ledger sum.
    for wallet_id in SYSTEM_WALLETS:
        legacy = db.wallets.find_one({"_id": wallet_id})
        if legacy is None:
            continue
        sums = _bucket_sums(db, wallet_id)
        if sum(sums.values()) != legacy["balance"]:
            raise MigrationRefused(f"{wallet_id}: balance {legacy['balance']} differs from its ledger "
                                   f"{sum(sums.values())}; run `python -m ops reconcile` first")
        for partition, amount in sums.items():
            db.wallets.update_one(
                {"_id": f"{wallet_id}#{partition}"},
                {"$setOnInsert": {"system": wallet_id, "partition": partition, "balance": amount,
                                  "status": "active", "version": 0, "createdAt": now, "lastTransactionAt": now}},
                upsert=True)
        db.wallets.delete_one({"_id": wallet_id})

    ops: list = []
    for tx in db.transactions.find({"parties": {"$exists": False}}, {"entries": 1}):
        parties = sorted({e["walletId"] for e in tx["entries"] if e["walletId"] not in SYSTEM_WALLETS})
        ops.append(UpdateOne({"_id": tx["_id"]}, {"$set": {"parties": parties}}))
        if len(ops) >= CHUNK:
            _flush(db.transactions, ops)
    _flush(db.transactions, ops)

    # Jobs settled before blocks existed point at their own per-job audit entry.
    for entry in db.auditlogs.find({"jobId": {"$exists": True}}, {"jobId": 1, "partition": 1, "seq": 1}):
        ops.append(UpdateOne({"_id": entry["jobId"], "audit": {"$exists": False}},
                             {"$set": {"audit": {"partition": entry["partition"], "seq": entry["seq"]}}}))
        if len(ops) >= CHUNK:
            _flush(db.jobs, ops)
    _flush(db.jobs, ops)

    for collection, indexes in OLD_INDEXES.items():
        for index in indexes:
            _drop(db, collection, index.document["name"])


def down(db: Database) -> None:
    if db.credits.find_one({"applied": False}, {"_id": 1}) is not None:
        raise MigrationRefused("deferred credits are still unapplied: let the ledger workers drain first")
    now = datetime.now(UTC)
    for wallet_id in SYSTEM_WALLETS:
        buckets = list(db.wallets.find({"system": wallet_id}, {"balance": 1}))
        total = sum(b["balance"] for b in buckets)
        db.wallets.update_one(
            {"_id": wallet_id},
            {"$set": {"balance": total}, "$setOnInsert": {
                "userId": wallet_id, "status": "active", "version": 0, "system": True, "createdAt": now,
                "lastTransactionAt": None}},
            upsert=True)
        db.wallets.delete_many({"_id": {"$in": [b["_id"] for b in buckets]}})
    for collection, indexes in OLD_INDEXES.items():
        db[collection].create_indexes(indexes)
    _drop(db, "transactions", "parties_recent")
    db.drop_collection("credits")
