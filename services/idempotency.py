"""Idempotency keys: one accepted job per (owner, key), replayed byte for byte.

A key is claimed with ONE insert (unique on ``ownerId`` + ``key``) that already
carries the answer, because the 202 body is known before the job is stored (its id
and timestamp are chosen up front); the job insert follows. A second request finds
the record and, when the fingerprints match, replays it once the job exists. While
the first request is still between the two inserts the job is missing, and the
answer is 409. A claim left behind by a crashed web process (record without job) is
taken over after ``STALE_AFTER``. Compared with claim-then-complete this saves one
update per accepted request, the costliest write on the accept path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError, ExecutionTimeout, PyMongoError, WriteConcernError

from ledger.timeutil import utcnow

STALE_AFTER = timedelta(seconds=30)

NEW, REPLAY, MISMATCH, IN_USE = "new", "replay", "mismatch", "in_use"


@dataclass(frozen=True)
class Claim:
    state: str
    record: dict[str, Any]


def claim(db: Database, owner_id: str, key: str, fingerprint: str, job_id: str, ttl_hours: int,
          response: dict[str, Any], now: datetime | None = None) -> Claim:
    """Claim ``key`` for ``job_id`` with its prepared ``response`` ({status, body, headers})."""
    now = now or utcnow()
    record = {"ownerId": owner_id, "key": key, "fingerprint": fingerprint, "jobId": job_id,
              "response": response, "createdAt": now, "expiresAt": now + timedelta(hours=ttl_hours)}
    try:
        db.idempotency_keys.insert_one(record)
        return Claim(NEW, record)
    except DuplicateKeyError:
        pass
    existing = db.idempotency_keys.find_one({"ownerId": owner_id, "key": key})
    if existing is None:  # expired between the insert and the read: try once more
        return claim(db, owner_id, key, fingerprint, job_id, ttl_hours, response, now)
    if existing["fingerprint"] != fingerprint:
        return Claim(MISMATCH, existing)
    if db.jobs.find_one({"_id": existing["jobId"]}, {"_id": 1}) is not None:
        return Claim(REPLAY, existing)
    if existing["createdAt"] <= now - STALE_AFTER:
        # The first request died between its two inserts. Take the claim over
        # atomically, keeping its job id so a late first insert cannot make two jobs.
        res = db.idempotency_keys.update_one(
            {"_id": existing["_id"], "createdAt": existing["createdAt"]}, {"$set": {"createdAt": now}})
        if res.modified_count:
            return Claim(NEW, {**existing, "createdAt": now})
    return Claim(IN_USE, existing)


def set_response(db: Database, record: dict[str, Any], response: dict[str, Any]) -> None:
    """Replace the stored answer (after a take-over rebuilt the job)."""
    db.idempotency_keys.update_one({"_id": record["_id"]}, {"$set": {"response": response}})


def release(db: Database, record: dict[str, Any]) -> None:
    """Forget a claim whose job could not be stored, so the client may retry the key."""
    db.idempotency_keys.delete_one({"_id": record["_id"], "jobId": record["jobId"]})


_UNKNOWN_LABELS = ("RetryableWriteError", "UnknownTransactionCommitResult", "NetworkError")


def outcome_unknown(exc: BaseException) -> bool:
    """True when a failed write may nevertheless have been applied by the server.

    A network error or timeout (the reply was lost), a write concern error (the write
    ran, its replication is in doubt) or an error labelled as retryable says nothing
    about whether the document exists. Only then must an idempotency claim be KEPT:
    a retry with the same key then replays that job or, once the claim is stale,
    re-inserts the SAME job id, and can never create a second job.
    """
    if isinstance(exc, ConnectionFailure | WriteConcernError | ExecutionTimeout):
        return True
    if isinstance(exc, PyMongoError):
        return any(exc.has_error_label(label) for label in _UNKNOWN_LABELS)
    return False
