"""Idempotency keys: one accepted job per (owner, key), replayed byte for byte.

A key is claimed with an insert (unique on ``ownerId`` + ``key``) before the job is
stored, then completed with the response. A second request finds the record and
either replays it (same fingerprint), refuses it (another body: 422) or, while the
first is still being accepted, answers 409. A claim left pending by a crashed web
process is recovered after ``STALE_AFTER``: the job id chosen at claim time tells
whether the job was stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from ledger.timeutil import utcnow

STALE_AFTER = timedelta(seconds=30)

NEW, REPLAY, MISMATCH, IN_USE = "new", "replay", "mismatch", "in_use"


@dataclass(frozen=True)
class Claim:
    state: str
    record: dict[str, Any]


def claim(db: Database, owner_id: str, key: str, fingerprint: str, job_id: str, ttl_hours: int,
          now: datetime | None = None) -> Claim:
    now = now or utcnow()
    record = {"ownerId": owner_id, "key": key, "fingerprint": fingerprint, "state": "pending",
              "jobId": job_id, "createdAt": now, "expiresAt": now + timedelta(hours=ttl_hours)}
    try:
        db.idempotency_keys.insert_one(record)
        return Claim(NEW, record)
    except DuplicateKeyError:
        pass
    existing = db.idempotency_keys.find_one({"ownerId": owner_id, "key": key})
    if existing is None:  # expired between the insert and the read: try once more
        return claim(db, owner_id, key, fingerprint, job_id, ttl_hours, now)
    if existing["fingerprint"] != fingerprint:
        return Claim(MISMATCH, existing)
    if existing["state"] == "done":
        return Claim(REPLAY, existing)
    if existing["createdAt"] <= now - STALE_AFTER:
        # The first request died mid-way. Take the claim over atomically.
        res = db.idempotency_keys.update_one(
            {"_id": existing["_id"], "state": "pending", "createdAt": existing["createdAt"]},
            {"$set": {"createdAt": now}})
        if res.modified_count:
            return Claim(NEW, {**existing, "createdAt": now})
    return Claim(IN_USE, existing)


def complete(db: Database, record: dict[str, Any], status: int, body: str, headers: dict[str, str]) -> None:
    db.idempotency_keys.update_one(
        {"_id": record["_id"]},
        {"$set": {"state": "done", "response": {"status": status, "body": body, "headers": headers}}})


def release(db: Database, record: dict[str, Any]) -> None:
    """Forget a claim whose request was refused before any job was stored."""
    db.idempotency_keys.delete_one({"_id": record["_id"], "state": "pending"})
