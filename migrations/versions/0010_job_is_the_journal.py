"""The outcome carries its ledger record (issue 24, lever 4): a settled job is its journal entry.

``up`` copies each ``transactions`` record's ledger fields onto its job (``entries``,
``parties``, ``providerTxId`` of a top-up, ``refundOf``/``refundLegs``/``reason`` of a
refund or chargeback), builds the jobs' indexes that served them and drops
``transactions``. The rest of a record is already on its job: ``createdAt`` is the
job's ``settledAt``, ``partition``/``auditSeq`` its ``audit`` pointer, ``type``,
``ownerId``, ``requestId`` the job's own. A record that the job's fields would not give
back byte for byte (one written by older code) is kept whole in ``ledgerAsWritten``,
so ``down`` returns it as it was. A record whose job is missing or not settled stops
the migration (reconcile reports those first); nothing is lost, re-run after fixing.

- ``jobs.parties_settled``: sparse, ``parties`` + ``settledAt``: history pages,
  statements and balances as of a date (what ``transactions.parties_recent`` served).
  Sparse, not partial: SecantusDB accepts a ``partialFilterExpression`` and enforces it
  for uniqueness, but its planner does not use a partial index for ``{parties: w}``
  (a collection scan, measured); a sparse one it uses. Queued jobs have neither field,
  so accepting writes no entry; failed jobs get one (``settledAt``).
- ``jobs.providerTxId_unique``: sparse unique, as the record's was; only settled top-ups hold it.
- ``jobs.refund_of``: sparse, a refund's and a chargeback's original.

``transactions.jobId`` unique is not replaced by an index: the job is written once
from ``queued`` to ``settled`` by the batch that read it queued (snapshot isolation
plus the partition's seq guard), and a record can no longer exist apart from its job.

``down`` rebuilds ``transactions`` as the old write plan wrote it (``_old_record``)
from every job with entries, with its three indexes, then removes the ledger fields
from the jobs and the jobs' indexes. Both directions walk ``_id`` ranges in chunks
and are idempotent (duplicates skipped, ``$set``/``$unset`` repeatable).
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING as A
from pymongo import DESCENDING as D
from pymongo import IndexModel, InsertOne, UpdateOne
from pymongo.database import Database
from pymongo.errors import BulkWriteError, CollectionInvalid, OperationFailure

CHUNK = 500
DUPLICATE_KEY = 11000
LEDGER_FIELDS = ("entries", "parties", "providerTxId", "refundOf", "refundLegs", "reason")
AS_WRITTEN = "ledgerAsWritten"
JOB_INDEXES = [
    IndexModel([("parties", A), ("settledAt", D)], name="parties_settled", sparse=True),
    IndexModel([("providerTxId", A)], name="providerTxId_unique", unique=True, sparse=True),
    IndexModel([("refundOf", A)], name="refund_of", sparse=True),
]
TX_INDEXES = [  # transactions as 0001, 0004 and 0005 left them
    IndexModel([("providerTxId", A)], name="providerTxId_unique", unique=True, sparse=True),
    IndexModel([("parties", A), ("createdAt", D)], name="parties_recent"),
    IndexModel([("refundOf", A)], name="refund_of", sparse=True),
]


class MigrationRefused(RuntimeError):
    pass


def _old_record(job: dict[str, Any]) -> dict[str, Any]:
    """The record the write plan inserted before 0010 (``ledger_record``), key for key."""
    if AS_WRITTEN in job:
        return job[AS_WRITTEN]
    audit = job.get("audit") or {}
    tx = {"_id": job["_id"], "txId": job["_id"], "jobId": job["_id"], "type": job["type"],
          "ownerId": job.get("ownerId"), "partition": audit.get("partition"), "auditSeq": audit.get("seq"),
          "entries": job["entries"], "parties": job["parties"], "requestId": job.get("requestId"),
          "createdAt": job.get("settledAt")}
    tx.update((name, job[name]) for name in LEDGER_FIELDS[2:] if name in job)
    return tx


def _chunks(collection: Any, query: dict[str, Any]) -> Any:
    """``query``'s documents in ``_id`` order, CHUNK at a time (a range per chunk: linear)."""
    last = None
    while True:
        ranged = query if last is None else {**query, "_id": {"$gt": last}}
        docs = list(collection.find(ranged).sort("_id", 1).limit(CHUNK))
        if not docs:
            return
        yield docs
        last = docs[-1]["_id"]


def _insert(collection: Any, docs: list[dict[str, Any]]) -> None:
    try:
        collection.bulk_write([InsertOne(d) for d in docs], ordered=False)
    except BulkWriteError as exc:  # a re-run after a partial run: already there
        if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
            raise


def _journal_update(tx: dict[str, Any], job: dict[str, Any] | None) -> UpdateOne:
    if job is None or job.get("status") != "settled":
        raise MigrationRefused(f"ledger record {tx['_id']} has no settled job: reconcile first")
    fields = {name: tx[name] for name in LEDGER_FIELDS if name in tx}
    rebuilt = _old_record({**{k: v for k, v in job.items() if k != AS_WRITTEN}, **fields})
    if rebuilt != tx or list(rebuilt) != list(tx):
        fields[AS_WRITTEN] = tx  # older bytes than the job can give back: kept as written
    return UpdateOne({"_id": job["_id"], "status": "settled"}, {"$set": fields})


def up(db: Database) -> None:
    db.jobs.create_indexes(JOB_INDEXES)
    if "transactions" not in db.list_collection_names():
        return
    for txs in _chunks(db.transactions, {}):
        jobs = {j["_id"]: j for j in db.jobs.find({"_id": {"$in": [t["_id"] for t in txs]}})}
        db.jobs.bulk_write([_journal_update(tx, jobs.get(tx["_id"])) for tx in txs], ordered=False)
    db.drop_collection("transactions")


def down(db: Database) -> None:
    if "transactions" not in db.list_collection_names():
        try:
            db.create_collection("transactions")  # transactions cannot create collections on older servers
        except CollectionInvalid:
            pass
    db.transactions.create_indexes(TX_INDEXES)
    unset = dict.fromkeys((*LEDGER_FIELDS, AS_WRITTEN), "")
    for jobs in _chunks(db.jobs, {"entries": {"$exists": True}}):
        _insert(db.transactions, [_old_record(job) for job in jobs])
        db.jobs.update_many({"_id": {"$in": [j["_id"] for j in jobs]}}, {"$unset": unset})
    for index in JOB_INDEXES:
        try:
            db.jobs.drop_index(index.document["name"])
        except OperationFailure:
            pass  # already gone
