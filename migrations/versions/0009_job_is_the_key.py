"""One durable write to accept (issue 24, lever 1): the job holds its idempotency key.

- ``jobs.idem_owner_key``: unique and sparse on ``(idem.owner, idem.key)``; only jobs
  that still hold a key are in it (``services/idempotency.py``).
- ``jobs.idem_expires``: sparse on ``idem.expiresAt``, beat's ``idempotency.expire``
  reads the expired keys from it in bounded chunks (no TTL index: the jobs stay).
- ``form_keys``: the console's one-time form keys of actions that are not jobs
  (freeze, role, plan, payout resolution...), with the unique and TTL indexes they
  had in ``idempotency_keys``.

``up`` moves every unexpired ``idempotency_keys`` record onto its job when the job
exists (so replays keep working across the upgrade; the answer is derived from the
job from now on) and the console's records into ``form_keys``, then drops the old
collection. A record without its job (a request that died between its two inserts)
is not moved: its key is free again, as it would have become after 30 s.

``down`` recreates ``idempotency_keys`` from the jobs that hold keys (with their
derived 202 answer, which the old code replays) and from ``form_keys``, then removes
the ``idem`` fields, both job indexes and ``form_keys``.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING as A
from pymongo import IndexModel, InsertOne, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, CollectionInvalid, OperationFailure

from ledger.timeutil import utcnow

# The answer down() rebuilds is the one the accept path derives: one definition of its bytes.
from services.jobs import accepted_response

CHUNK = 500
DUPLICATE_KEY = 11000
JOB_INDEXES = [
    IndexModel([("idem.owner", A), ("idem.key", A)], name="idem_owner_key", unique=True, sparse=True),
    IndexModel([("idem.expiresAt", A)], name="idem_expires", sparse=True),
]
KEY_INDEXES = [  # idempotency_keys as 0001 made it, and form_keys alike
    IndexModel([("ownerId", A), ("key", A)], name="owner_key_unique", unique=True),
    IndexModel([("expiresAt", A)], name="ttl", expireAfterSeconds=0),
]


def _create(db: Database, name: str) -> None:
    if name not in db.list_collection_names():
        try:
            db.create_collection(name)  # transactions cannot create collections on older servers
        except CollectionInvalid:
            pass  # created meanwhile by a running web process: what we wanted
    db[name].create_indexes(KEY_INDEXES)


def _write(collection: Any, ops: list[Any]) -> None:
    """Unordered bulk write of ``ops``; a duplicate (a re-run after a partial run) is skipped."""
    if not ops:
        return
    try:
        collection.bulk_write(ops, ordered=False)
    except BulkWriteError as exc:
        if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
            raise


def _flush(db: Database, jobs: list[Any], forms: list[Any], force: bool = False) -> None:
    if force or len(jobs) >= CHUNK:
        _write(db.jobs, jobs)
        jobs.clear()
    if force or len(forms) >= CHUNK:
        _write(db.form_keys, forms)
        forms.clear()


def up(db: Database) -> None:
    db.jobs.create_indexes(JOB_INDEXES)
    _create(db, "form_keys")
    if "idempotency_keys" not in db.list_collection_names():
        return
    jobs: list[Any] = []
    forms: list[Any] = []
    for rec in db.idempotency_keys.find({"expiresAt": {"$gt": utcnow()}}):
        if rec.get("jobId") is None:  # a console form's key: its action is not a job
            forms.append(InsertOne({k: v for k, v in rec.items() if k != "_id"}))
        else:  # only a job that exists takes the key (and only one that holds none yet)
            idem = {"owner": rec["ownerId"], "key": rec["key"], "fp": rec["fingerprint"],
                    "expiresAt": rec["expiresAt"]}
            jobs.append(UpdateOne({"_id": rec["jobId"], "idem": {"$exists": False}}, {"$set": {"idem": idem}}))
        _flush(db, jobs, forms)
    _flush(db, jobs, forms, force=True)
    db.drop_collection("idempotency_keys")


def _old_record(job: dict[str, Any]) -> dict[str, Any]:
    idem = job["idem"]
    answer = accepted_response(job)
    return {"ownerId": idem["owner"], "key": idem["key"], "fingerprint": idem["fp"], "jobId": job["_id"],
            "response": {"status": answer.status, "body": answer.body, "headers": dict(answer.headers)},
            "createdAt": job["createdAt"], "expiresAt": idem["expiresAt"]}


def down(db: Database) -> None:
    _create(db, "idempotency_keys")
    batch: list[Any] = []
    for job in db.jobs.find({"idem.expiresAt": {"$exists": True}}).hint("idem_expires"):
        batch.append(InsertOne(_old_record(job)))
        if len(batch) >= CHUNK:
            _write(db.idempotency_keys, batch)
            batch = []
    _write(db.idempotency_keys, batch)
    if "form_keys" in db.list_collection_names():
        _write(db.idempotency_keys, [InsertOne({k: v for k, v in rec.items() if k != "_id"})
                                     for rec in db.form_keys.find()])
    # Through the index: only the jobs that hold a key are visited, never the whole history.
    while ids := [d["_id"] for d in db.jobs.find({"idem.expiresAt": {"$exists": True}}, {"_id": 1})
                  .hint("idem_expires").limit(CHUNK)]:
        db.jobs.update_many({"_id": {"$in": ids}}, {"$unset": {"idem": ""}})
    for name in ("idem_owner_key", "idem_expires"):
        try:
            db.jobs.drop_index(name)
        except OperationFailure:
            pass  # already gone
    db.drop_collection("form_keys")
