"""Idempotency keys: the accepted job IS the claim, one insert per accepted request.

A job accepted under a key carries ``idem = {owner, key, fp, expiresAt}``, and the
unique sparse index ``idem_owner_key`` over ``(idem.owner, idem.key)`` lets at most
one job hold a key. Storing the job therefore claims its key in the same write; a
second request with the key fails that insert on the index, finds the holder and
replays it (same fingerprint) or is refused (another body). The answer is derived
from the job (``services.jobs.accepted_response``), never stored beside it.

There is no "in use" window: nothing is written before the job, so a request is
either stored with its key or not at all. A job insert whose outcome is unknown (a
lost reply) cannot give the key to a second job either: a retry's insert collides
with the first job if that one was stored, and a late first insert collides with
the retry's job if the retry got there first.

Keys expire after ``IDEMPOTENCY_TTL_HOURS`` without deleting jobs: beat's
:func:`expire_keys` removes the ``idem`` field of jobs whose key expired, in bounded
chunks read from the sparse ``idem_expires`` index (jobs without a key are not in
it, so the work is proportional to the keys that expired, not to history). An
expired key found before beat got to it is released on the spot
(:func:`release_if_expired`), so expiry is exact for the client.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database
from pymongo.errors import ConnectionFailure, DuplicateKeyError, ExecutionTimeout, PyMongoError, WriteConcernError

from ledger.timeutil import utcnow

FIELD = "idem"  # on jobs: {owner, key, fp, expiresAt}
KEY_INDEX = "idem_owner_key"
EXPIRY_INDEX = "idem_expires"
EXPIRE_CHUNK = 500  # jobs per update: a bounded request whatever expired at once
EXPIRE_MAX_CHUNKS = 20  # per tick: a backlog of expired keys is worked off over ticks


def key_fields(owner_id: str, key: str, fingerprint: str, ttl_hours: int, now: datetime) -> dict[str, Any]:
    """The ``idem`` sub-document that makes a job the holder of ``key``."""
    return {"owner": owner_id, "key": key, "fp": fingerprint, "expiresAt": now + timedelta(hours=ttl_hours)}


def is_key_conflict(exc: DuplicateKeyError) -> bool:
    """True when the duplicate is on the key index (another job holds it), not on ``_id``."""
    pattern = (exc.details or {}).get("keyPattern") or {}
    if pattern:
        return f"{FIELD}.owner" in pattern
    return KEY_INDEX in str(exc)  # servers that do not report the pattern name the index


def holder(db: Database, owner_id: str, key: str) -> dict[str, Any] | None:
    """The job holding ``key`` for ``owner_id`` (one probe of the unique index), or None."""
    return db.jobs.find_one({f"{FIELD}.owner": owner_id, f"{FIELD}.key": key})


def release_if_expired(db: Database, job: dict[str, Any], now: datetime | None = None) -> bool:
    """Drop the key of ``job`` when it has expired (beat had not got to it yet).

    Conditional on the expiry read, so of two requests releasing the same key one
    wins and both then race on the insert as any two first requests do.
    """
    expires = job[FIELD]["expiresAt"]
    if expires > (now or utcnow()):
        return False
    res = db.jobs.update_one({"_id": job["_id"], f"{FIELD}.expiresAt": expires}, {"$unset": {FIELD: ""}})
    return res.modified_count == 1


def expire_keys(db: Database, now: datetime | None = None, *, chunk: int = EXPIRE_CHUNK,
                max_chunks: int = EXPIRE_MAX_CHUNKS) -> int:
    """Remove the keys of jobs whose key expired (the jobs stay); how many were removed.

    Reads ``chunk`` ids at a time in expiry order from the sparse expiry index and unsets
    them in one update filtered on the same expiry, at most ``max_chunks`` times per call.
    Safe to run twice at once (two beats): an already released key is not matched again.
    """
    now = now or utcnow()
    removed = 0
    for _ in range(max_chunks):
        due = {f"{FIELD}.expiresAt": {"$lte": now}}
        ids = [doc["_id"] for doc in db.jobs.find(due, {"_id": 1}).sort(f"{FIELD}.expiresAt", 1)
               .limit(chunk).hint(EXPIRY_INDEX)]
        if not ids:
            break
        removed += db.jobs.update_many({"_id": {"$in": ids}, **due}, {"$unset": {FIELD: ""}}).modified_count
        if len(ids) < chunk:
            break
    return removed


_UNKNOWN_LABELS = ("RetryableWriteError", "UnknownTransactionCommitResult", "NetworkError")


def outcome_unknown(exc: BaseException) -> bool:
    """True when a failed write may nevertheless have been applied by the server.

    A network error or timeout (the reply was lost), a write concern error (the write
    ran, its replication is in doubt) or an error labelled as retryable says nothing
    about whether the document exists. The key needs no care then (the job holds it,
    or nothing does), but the client must be told to retry with the same key rather
    than be given a definite failure.
    """
    if isinstance(exc, ConnectionFailure | WriteConcernError | ExecutionTimeout):
        return True
    if isinstance(exc, PyMongoError):
        return any(exc.has_error_label(label) for label in _UNKNOWN_LABELS)
    return False
