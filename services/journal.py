"""Where the ledger lives and how one of its records looks to readers.

A settled job is its own journal entry (issue 24, lever 4): the batch's update of the
job ``$set``s its ledger fields (``entries``, ``parties``, ``providerTxId`` for a
top-up, ``refundOf``/``refundLegs``/``reason`` for a refund or chargeback) beside its
status, so settling writes one document where it wrote two. The record is dated by
``settledAt`` and placed by the job's ``audit`` pointer (partition, block). A failed
job carries no ledger fields; nothing but a settled job does.

Readers ask in the names the ``transactions`` collection had (``txId``, ``createdAt``,
``partition``, ``auditSeq``...): :func:`find` renames the filter, sort and projection
and :func:`record` gives the document back in that shape, so the field names live here
and nowhere else. Indexes on ``jobs`` (migration 0010): ``parties_settled`` (sparse,
``parties`` + ``settledAt``: history pages, statements, balances as of a date),
``providerTxId_unique`` (sparse unique) and ``refund_of`` (sparse).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.database import Database

COLLECTION = "jobs"
DATE = "settledAt"  # the journal date: the batch's ``now``, as the old record's createdAt was
PARTITION = "audit.partition"
# The ledger's own fields on a settled job; naming one in a filter already excludes other jobs.
LEDGER_FIELDS = ("entries", "parties", "providerTxId", "refundOf", "refundLegs", "reason")
# The old record's names -> where the job keeps them (the rest keep their names).
RENAMED = {"txId": "_id", "jobId": "_id", "createdAt": DATE, "partition": PARTITION, "auditSeq": "audit.seq"}
# The record's fields in the order the old write plan wrote them (migration 0010 rebuilds those bytes).
RECORD_ORDER = ("_id", "txId", "jobId", "type", "ownerId", "partition", "auditSeq", "entries", "parties",
                "requestId", "createdAt", "providerTxId", "refundOf", "refundLegs", "reason")
HAS_ENTRIES = {"entries": {"$exists": True}}


def ledger(db: Database) -> Collection:
    """The collection that holds the ledger."""
    return db[COLLECTION]


def _rename(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {RENAMED.get(k, k): _rename(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename(v) for v in value]
    return value


def stored_filter(query: Mapping[str, Any]) -> dict[str, Any]:
    """``query`` in record names -> the filter on jobs, limited to ledger records."""
    renamed = _rename(query)
    if not any(name in renamed for name in LEDGER_FIELDS):
        renamed = {**HAS_ENTRIES, **renamed}
    return renamed


def record(job: Mapping[str, Any]) -> dict[str, Any]:
    """A settled job shown as its ledger record, key for key as the old write plan wrote it.

    Of a projected job only the projected fields mean anything; the others read None.
    """
    audit = job.get("audit") or {}
    view = {"_id": job.get("_id"), "txId": job.get("_id"), "jobId": job.get("_id"), "type": job.get("type"),
            "ownerId": job.get("ownerId"), "partition": audit.get("partition"), "auditSeq": audit.get("seq"),
            "requestId": job.get("requestId"), "createdAt": job.get(DATE)}
    view.update((name, job[name]) for name in LEDGER_FIELDS if name in job)
    return {k: view[k] for k in RECORD_ORDER if k in view}


def find(db: Database, query: Mapping[str, Any], fields: list[str] | None = None,
         sort: list[tuple[str, int]] | None = None, limit: int = 0,
         session: ClientSession | None = None) -> Iterator[dict[str, Any]]:
    """Ledger records matching ``query`` (record names), as :func:`record` shows them."""
    projection = None
    if fields is not None:
        projection = {RENAMED.get(f, f): 1 for f in fields}
        projection.setdefault(DATE, 1)
    cursor = ledger(db).find(stored_filter(query), projection, session=session)
    if sort:
        cursor = cursor.sort([(RENAMED.get(k, k), d) for k, d in sort])
    if limit:
        cursor = cursor.limit(limit)
    for job in cursor:
        yield record(job)


def find_one(db: Database, query: Mapping[str, Any], fields: list[str] | None = None) -> dict[str, Any] | None:
    return next(find(db, query, fields, limit=1), None)
