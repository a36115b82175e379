"""Webhook dispatch: a partition's committed audit blocks become events and deliveries.

:func:`dispatch_partition` walks a partition's blocks past its cursor
(``webhook_cursors``), inserts one event per job event (``webhook_events``, the exact
body every endpoint gets) and one delivery per subscribed endpoint
(``webhook_deliveries``), both with ids derived from the job and the endpoint, so a
second run inserts nothing; then it moves the cursor under a guard on its old value.
With no active endpoint it only moves the cursor to the chain head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ledger.audit import STATEMENT_CHAIN
from ledger.timeutil import utcnow
from services.job_views import job_details
from services.webhook_events import (
    DeliveryStatus,
    EndpointStatus,
    delivery_id,
    event_body,
    event_id,
    event_types_of,
)

DISPATCH_PAGE = 200  # audit blocks per dispatcher page


@dataclass
class Dispatch:
    blocks: int = 0
    events: int = 0
    deliveries: list[str] = field(default_factory=list)  # newly inserted: enqueue these
    more: bool = False


def _insert_new(collection: Any, docs: list[dict[str, Any]]) -> list[str]:
    """Insert ``docs`` ignoring those already there; the ids this call inserted."""
    if not docs:
        return []
    try:
        collection.insert_many(docs, ordered=False)
        return [d["_id"] for d in docs]
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != 11000 for e in errors):
            raise
        taken = {e["index"] for e in errors}
        return [d["_id"] for i, d in enumerate(docs) if i not in taken]


def _move_cursor(db: Database, partition: int, old: int, new: int, now: datetime) -> bool:
    if new <= old:
        return True
    try:
        res = db.webhook_cursors.update_one({"_id": partition, "auditSeq": old},
                                            {"$set": {"auditSeq": new, "updatedAt": now}}, upsert=True)
    except DuplicateKeyError:
        return False  # another dispatcher moved it first: its inserts and ours are the same documents
    return res.matched_count == 1 or res.upserted_id is not None


def _unread(db: Database, chain: int) -> tuple[int, int] | None:
    """``(cursor, head)`` of an audit chain's blocks not yet dispatched, or None when none are.

    The head is read BEFORE the endpoints (by the callers): a block at or below it
    committed before an endpoint they miss was registered, so skipping it loses nobody's event.
    """
    cursor_doc = db.webhook_cursors.find_one({"_id": chain})
    cursor = cursor_doc["auditSeq"] if cursor_doc else 0
    head_doc = db.partitions.find_one({"_id": chain}, {"auditSeq": 1})
    head = head_doc.get("auditSeq", 0) if head_doc else 0
    return (cursor, head) if head > cursor else None


def dispatch_partition(db: Database, partition: int, *, page: int = DISPATCH_PAGE,
                       clock: Callable[[], datetime] = utcnow) -> Dispatch:
    """Turn the next page of ``partition``'s audit blocks into events and deliveries."""
    now = clock()
    result = Dispatch()
    unread = _unread(db, partition)
    if unread is None:
        return result
    cursor, head = unread
    endpoints = list(db.webhook_endpoints.find({"status": EndpointStatus.ACTIVE},
                                               {"eventTypes": 1, "createdAt": 1}))
    if not endpoints:
        _move_cursor(db, partition, cursor, head, now)
        return result
    blocks = list(db.auditlogs.find({"partition": partition, "seq": {"$gt": cursor, "$lte": head}},
                                    {"seq": 1, "createdAt": 1, "jobs": 1})
                  .sort("seq", 1).limit(page))
    if not blocks:
        return result
    wanted = [(block, record) for block in blocks for record in block.get("jobs", [])
              if any(e["createdAt"] <= block["createdAt"] for e in endpoints)]
    jobs = {j["_id"]: j for j in db.jobs.find({"_id": {"$in": sorted({r["jobId"] for _, r in wanted})}})}
    views = job_details(db, list(jobs.values()))
    events: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    for block, record in wanted:
        job = jobs.get(record["jobId"])
        if job is None:
            continue
        for event_type in event_types_of(record, job):
            targets = [e for e in endpoints
                       if event_type in e["eventTypes"] and e["createdAt"] <= block["createdAt"]]
            if not targets:
                continue
            evt_id = event_id(job["_id"], event_type)
            occurred = job.get("settledAt") or block["createdAt"]
            events.append({"_id": evt_id, "type": event_type, "jobId": job["_id"], "partition": partition,
                           "auditSeq": block["seq"], "occurredAt": occurred, "createdAt": now,
                           "body": event_body(evt_id, event_type, occurred, views[job["_id"]])})
            for endpoint in targets:
                deliveries.append({"_id": delivery_id(evt_id, endpoint["_id"]), "eventId": evt_id,
                                   "endpointId": endpoint["_id"], "type": event_type, "jobId": job["_id"],
                                   "status": DeliveryStatus.PENDING, "attempts": 0, "run": 1,
                                   "nextAttemptAt": now, "log": [], "createdAt": now, "updatedAt": now})
    # Events before deliveries: a delivery never points at an event not yet stored.
    result.events = len(_insert_new(db.webhook_events, events))
    result.deliveries = _insert_new(db.webhook_deliveries, deliveries)
    result.blocks = len(blocks)
    last = blocks[-1]["seq"]
    _move_cursor(db, partition, cursor, last, now)
    result.more = last < head
    return result


# --- statement.ready: the statements' audit chain is the outbox ----------------------------

STATEMENT_ACTION = "statement.closed"  # services/statements.store_closed's chain entry


def statement_event_id(statement_id: str) -> str:
    """``evt_statement_<userId>_<YYYY-MM>``: one event per stored statement, whoever stored it."""
    return "evt_statement_" + statement_id.replace(":", "_")


def statement_event_data(head: dict[str, Any]) -> dict[str, Any]:
    """The ``data`` of ``statement.ready``: the stored head's figures and where to read it."""
    user_id, period = head["userId"], head["period"]
    return {"statementId": head["_id"], "userId": user_id, "period": period, "hash": head["hash"],
            "linesDigest": head.get("linesDigest"), "openingBalance": head["openingBalance"],
            "closingBalance": head["closingBalance"], "net": head["net"], "movements": head["movements"],
            "currency": head.get("currency", "COIN"), "generatedAt": head.get("generatedAt"),
            # JSON by default, CSV with ``Accept: text/csv``; the first for the creator's token,
            # the second for an admin's.
            "links": {"statement": f"/api/statements/{period}",
                      "admin": f"/api/admin/wallets/{user_id}/statements/{period}"}}


def dispatch_statements(db: Database, *, page: int = DISPATCH_PAGE,
                        clock: Callable[[], datetime] = utcnow) -> Dispatch:
    """Turn the next page of the statements' audit chain into ``statement.ready`` events.

    A statement's head and its chain entry commit in one transaction
    (``services/statements.store_closed``), so the entry is the outbox record: the event
    exists exactly when the statement was stored, by beat or by the first request for it.
    Same shape as :func:`dispatch_partition`: ids derived from the statement and the
    endpoint (a re-run inserts nothing), the cursor (``webhook_cursors._id = -2``) moved
    under a guard on its old value, endpoints registered after the entry not served.
    """
    now = clock()
    chain = STATEMENT_CHAIN
    result = Dispatch()
    unread = _unread(db, chain)
    if unread is None:
        return result
    cursor, head = unread
    endpoints = list(db.webhook_endpoints.find({"status": EndpointStatus.ACTIVE, "eventTypes": "statement.ready"},
                                               {"createdAt": 1}))
    if not endpoints:
        _move_cursor(db, chain, cursor, head, now)
        return result
    entries = list(db.auditlogs.find({"partition": chain, "seq": {"$gt": cursor, "$lte": head}},
                                     {"seq": 1, "createdAt": 1, "action": 1, "target": 1})
                   .sort("seq", 1).limit(page))
    if not entries:
        return result
    wanted = [e for e in entries if e.get("action") == STATEMENT_ACTION
              and any(ep["createdAt"] <= e["createdAt"] for ep in endpoints)]
    heads = {h["_id"]: h for h in db.statements.find({"_id": {"$in": [e["target"]["id"] for e in wanted]}},
                                                     {"chunks": 0})}
    events: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    for entry in wanted:
        stored = heads.get(entry["target"]["id"])
        if stored is None:
            continue  # cannot happen: the head committed with its entry
        evt_id = statement_event_id(stored["_id"])
        events.append({"_id": evt_id, "type": "statement.ready", "jobId": None, "statementId": stored["_id"],
                       "partition": chain, "auditSeq": entry["seq"], "occurredAt": entry["createdAt"],
                       "createdAt": now, "body": event_body(evt_id, "statement.ready", entry["createdAt"],
                                                            statement_event_data(stored))})
        for endpoint in endpoints:
            if endpoint["createdAt"] > entry["createdAt"]:
                continue
            deliveries.append({"_id": delivery_id(evt_id, endpoint["_id"]), "eventId": evt_id,
                               "endpointId": endpoint["_id"], "type": "statement.ready", "jobId": None,
                               "statementId": stored["_id"], "status": DeliveryStatus.PENDING, "attempts": 0,
                               "run": 1, "nextAttemptAt": now, "log": [], "createdAt": now, "updatedAt": now})
    result.events = len(_insert_new(db.webhook_events, events))
    result.deliveries = _insert_new(db.webhook_deliveries, deliveries)
    result.blocks = len(entries)
    last = entries[-1]["seq"]
    _move_cursor(db, chain, cursor, last, now)
    result.more = last < head
    return result
