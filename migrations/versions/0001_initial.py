"""Collections, indexes for every hot query, system wallets and partitions."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo import ASCENDING as A
from pymongo import DESCENDING as D
from pymongo import IndexModel
from pymongo.database import Database
from pymongo.errors import CollectionInvalid

SYSTEM_WALLETS = ("platform:revenue", "platform:processing", "external:funding")

INDEXES: dict[str, list[IndexModel]] = {
    "users": [
        IndexModel([("email", A)], name="email_unique", unique=True),
        IndexModel([("email", A), ("accountStatus", A)], name="email_status"),
    ],
    "wallets": [
        IndexModel([("userId", A)], name="userId_unique", unique=True),
        IndexModel([("userId", A), ("status", A)], name="userId_status"),
    ],
    "transactions": [
        IndexModel([("txId", A)], name="txId_unique", unique=True),
        IndexModel([("jobId", A)], name="jobId_unique", unique=True),
        IndexModel([("entries.walletId", A), ("createdAt", D)], name="wallet_history"),
        IndexModel([("providerTxId", A)], name="providerTxId_unique", unique=True, sparse=True),
    ],
    "jobs": [
        IndexModel([("partition", A), ("status", A), ("createdAt", A)], name="partition_queue"),
        IndexModel([("ownerId", A), ("createdAt", D)], name="owner_recent"),
        IndexModel([("status", A), ("createdAt", A)], name="status_age"),
    ],
    "idempotency_keys": [
        IndexModel([("ownerId", A), ("key", A)], name="owner_key_unique", unique=True),
        IndexModel([("expiresAt", A)], name="ttl", expireAfterSeconds=0),
    ],
    "contents": [IndexModel([("creatorId", A), ("isActive", A)], name="creator_active")],
    "unlocks": [IndexModel([("userId", A), ("contentId", A)], name="user_content_unique", unique=True)],
    "subscriptions": [
        IndexModel([("subscriberId", A), ("creatorId", A), ("status", A), ("expiresAt", A)],
                   name="subscriber_creator"),
        IndexModel([("status", A), ("expiresAt", A)], name="status_expires"),
    ],
    "auditlogs": [
        IndexModel([("txId", A), ("createdAt", D)], name="txId_recent"),
        IndexModel([("entity.type", A), ("entity.id", A)], name="entity"),
        IndexModel([("actor.id", A)], name="actor"),
        IndexModel([("partition", A), ("seq", A)], name="partition_seq_unique", unique=True),
    ],
    "plans": [],
    "partitions": [],
}


def up(db: Database) -> None:
    existing = set(db.list_collection_names())
    for name, indexes in INDEXES.items():
        # Transactions cannot create collections on older servers: create them up front.
        if name not in existing:
            try:
                db.create_collection(name)
            except CollectionInvalid:
                pass  # created meanwhile (a running worker's first write): what we wanted
        if indexes:
            db[name].create_indexes(indexes)
    now = datetime.now(UTC)
    for wallet_id in SYSTEM_WALLETS:
        db.wallets.update_one(
            {"_id": wallet_id},
            {"$setOnInsert": {"userId": wallet_id, "balance": 0, "status": "active", "version": 0,
                              "system": True, "createdAt": now, "lastTransactionAt": None}},
            upsert=True,
        )


def down(db: Database) -> None:
    for name in INDEXES:
        db.drop_collection(name)
