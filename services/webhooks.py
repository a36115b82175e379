"""Job webhooks: endpoints, events derived from the audit chain, deliveries and their log.

Settlement writes nothing for webhooks. Every batch already commits ONE audit block
(``auditlogs``: ``{partition, seq, jobs: [{jobId, type, outcome, ...}]}``) in the same
transaction as its job outcomes, so the block *is* the outbox record of the batch's
events: an event exists exactly when its job's outcome was committed.

After commit, :func:`dispatch_partition` walks a partition's blocks past its cursor
(``webhook_cursors``), inserts one event per job event (``webhook_events``, the exact
body every endpoint gets) and one delivery per subscribed endpoint
(``webhook_deliveries``), both with ids derived from the job and the endpoint, so a
second run inserts nothing; then it moves the cursor under a guard on its old value.
With no active endpoint it only moves the cursor to the chain head.

:func:`deliver_one` makes one attempt: it claims the delivery with a lease (a guarded
update: pending, due), signs and POSTs the body, and writes the outcome under a guard
on its own lease, so two workers holding the same message (a redelivery, beat's due
sweep) never both log an attempt. A worker killed mid-attempt leaves a lease that
expires; beat's sweep (:func:`due_deliveries`) hands the delivery out again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from bson import ObjectId
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ledger.audit import STATEMENT_CHAIN
from ledger.operations import OPERATION_TYPES
from ledger.states import JobStatus, PayoutStatus
from ledger.timeutil import iso, utcnow
from services import operator_audit
from services.job_views import job_details
from services.queries import page as cursor_page
from services.store import database
from services.webhook_http import Attempt, UrlRefused, check_url, next_delay, post
from services.webhook_signing import headers as signed_headers
from services.webhook_signing import new_secret

log = logging.getLogger("purser.webhooks")


class EndpointStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"  # by an admin (DELETE) or by the receiver (410 Gone); never delivered to again


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # an attempt is due at nextAttemptAt (or leased by a worker until then)
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # the schedule is spent, the receiver answered 410, or the endpoint was disabled


JOB_EVENTS = ("job.settled", "job.failed")
PAYOUT_EVENTS = tuple(f"payout.{s.value}" for s in PayoutStatus if s is not PayoutStatus.SUBMITTED)
MONEY_BACK_EVENTS = ("refund.settled", "chargeback.settled")
STATEMENT_EVENTS = ("statement.ready",)
EVENT_TYPES: tuple[str, ...] = JOB_EVENTS + PAYOUT_EVENTS + MONEY_BACK_EVENTS + STATEMENT_EVENTS

LOG_KEEP = 50  # attempts kept per delivery (newest); the count is kept in ``attempts``/``run``
DISPATCH_PAGE = 200  # audit blocks per dispatcher page
SWEEP_LIMIT = 500  # due deliveries handed out per beat tick
LEASE_MARGIN = 5.0  # seconds a claimed attempt may take beyond connect + read timeouts (then: at least once)


class WebhookDisabled(RuntimeError):
    pass


# --- events -------------------------------------------------------------------------------


def event_types_of(record: dict[str, Any], job: dict[str, Any] | None) -> list[str]:
    """The events one audit record gives: ``job.<outcome>`` and, for money out and back, a specific one."""
    outcome = record.get("outcome")
    if outcome == JobStatus.SETTLED:
        types = ["job.settled"]
    elif outcome == JobStatus.FAILED:
        return ["job.failed"]
    else:
        return []
    # The operation class declares its own events; of several, its result's status names one.
    cls = OPERATION_TYPES.get(record.get("type") or "")
    events = cls.events if cls is not None else ()
    if len(events) == 1:
        types.append(events[0])
    elif events:
        status = ((job or {}).get("result") or {}).get("status")
        types += [event for event in events if event == f"{event.split('.', 1)[0]}.{status}"]
    return types


def event_id(job_id: str, event_type: str) -> str:
    """``evt_<jobId>`` for the job event; the specific event of the same job gets its family."""
    family = event_type.split(".", 1)[0]
    return f"evt_{job_id}" if family == "job" else f"evt_{job_id}_{family}"


def delivery_id(evt_id: str, endpoint_id: str) -> str:
    """A 24-hex id derived from the event and the endpoint: a re-run inserts nothing new."""
    return hashlib.sha256(f"{evt_id}:{endpoint_id}".encode()).hexdigest()[:24]


def event_body(evt_id: str, event_type: str, occurred: datetime, data: dict[str, Any]) -> str:
    """The envelope every endpoint receives, byte for byte on every attempt; ``data`` is the
    job's :func:`~services.job_views.job_detail`, as ``GET /api/jobs/<id>`` shows it now."""
    envelope = {"id": evt_id, "type": event_type, "timestamp": iso(occurred), "data": data}
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)


# --- endpoints ----------------------------------------------------------------------------


def _valid_secrets(endpoint: dict[str, Any], now: datetime) -> list[str]:
    return [s["secret"] for s in endpoint.get("secrets", [])
            if s.get("expiresAt") is None or s["expiresAt"] > now]


def endpoint_view(endpoint: dict[str, Any]) -> dict[str, Any]:
    """The admin's view of an endpoint (never its secrets)."""
    now = utcnow()
    return {
        "webhookId": endpoint["_id"],
        "url": endpoint["url"],
        "description": endpoint.get("description"),
        "eventTypes": list(endpoint["eventTypes"]),
        "status": endpoint["status"],
        "disabledReason": endpoint.get("disabledReason"),
        "activeSecrets": len(_valid_secrets(endpoint, now)),
        "createdAt": iso(endpoint["createdAt"]),
        "updatedAt": iso(endpoint["updatedAt"]),
    }


def _public(endpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    if endpoint is None:
        return None
    return {k: v for k, v in endpoint.items() if k != "secrets"}


def register(url: str, event_types: Sequence[str], description: str | None, actor: dict[str, str],
             request_id: str | None, *, allow_private: bool, db: Database | None = None) -> tuple[dict[str, Any], str]:
    """A new active endpoint and its secret (returned once); :class:`UrlRefused` for a bad URL."""
    check_url(url, allow_private=allow_private)
    db = database(db)
    now = utcnow()
    secret = new_secret()
    doc = {"_id": str(ObjectId()), "url": url, "description": description,
           "eventTypes": sorted(dict.fromkeys(event_types)), "status": EndpointStatus.ACTIVE,
           "secrets": [{"secret": secret, "createdAt": now, "expiresAt": None}],
           "createdBy": actor.get("id"), "createdAt": now, "updatedAt": now}

    def apply(session: Any) -> operator_audit.Change:
        db.webhook_endpoints.insert_one(doc, session=session)
        return operator_audit.Change(None, _public(doc))

    operator_audit.record(db, "webhook.register", actor, {"type": "webhook", "id": doc["_id"]}, request_id, apply)
    _forget_active()
    return doc, secret


def get_endpoint(endpoint_id: str, db: Database | None = None) -> dict[str, Any] | None:
    return database(db).webhook_endpoints.find_one({"_id": endpoint_id})


def list_endpoints(limit: int, cursor: str | None,
                   db: Database | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; ``BadCursor`` (services.queries) for a cursor this API did not give."""
    return cursor_page(database(db), "webhook_endpoints", {}, limit, cursor)


def disable(endpoint_id: str, actor: dict[str, str], request_id: str | None, reason: str = "deleted by an admin",
            db: Database | None = None) -> dict[str, Any] | None:
    """Stop delivering to an endpoint (its log is kept); ``None`` when there is no such endpoint."""
    db = database(db)
    now = utcnow()

    def apply(session: Any) -> operator_audit.Change | None:
        before = db.webhook_endpoints.find_one({"_id": endpoint_id}, session=session)
        if before is None:
            return None
        db.webhook_endpoints.update_one({"_id": endpoint_id}, {"$set": {
            "status": EndpointStatus.DISABLED, "disabledReason": reason, "disabledAt": now, "updatedAt": now}},
            session=session)
        after = db.webhook_endpoints.find_one({"_id": endpoint_id}, session=session)
        return operator_audit.Change(_public(before), _public(after), after)

    done = operator_audit.record(db, "webhook.delete", actor, {"type": "webhook", "id": endpoint_id}, request_id,
                                 apply)
    if done is None:
        return None
    _fail_pending(db, endpoint_id, f"endpoint disabled: {reason}", now)
    _forget_active()
    return done[0].result


def rotate(endpoint_id: str, actor: dict[str, str], request_id: str | None, grace: timedelta,
           db: Database | None = None) -> tuple[dict[str, Any], str] | None:
    """A new secret; the ones valid now stay valid for ``grace`` (both sign meanwhile)."""
    db = database(db)
    now = utcnow()
    secret = new_secret()

    def apply(session: Any) -> operator_audit.Change | None:
        before = db.webhook_endpoints.find_one({"_id": endpoint_id}, session=session)
        if before is None:
            return None
        kept = [dict(s, expiresAt=min(s["expiresAt"] or now + grace, now + grace))
                for s in before.get("secrets", []) if s.get("expiresAt") is None or s["expiresAt"] > now]
        db.webhook_endpoints.update_one({"_id": endpoint_id}, {"$set": {
            "secrets": kept + [{"secret": secret, "createdAt": now, "expiresAt": None}], "updatedAt": now}},
            session=session)
        after = db.webhook_endpoints.find_one({"_id": endpoint_id}, session=session)
        return operator_audit.Change({"activeSecrets": len(kept)}, {"activeSecrets": len(kept) + 1}, after)

    done = operator_audit.record(db, "webhook.rotate", actor, {"type": "webhook", "id": endpoint_id}, request_id,
                                 apply)
    return None if done is None else (done[0].result, secret)


# Whether any endpoint is active, as this process last saw it: the settler asks after
# every batch, and must not pay a read per batch when nobody listens.
_ACTIVE_TTL = 2.0
_active_cache: tuple[float, bool] | None = None


def _forget_active() -> None:
    global _active_cache
    _active_cache = None


def any_active_endpoint(db: Database | None = None) -> bool:
    """True when an endpoint is active (cached for a couple of seconds per process)."""
    global _active_cache
    now = time.monotonic()
    if _active_cache is not None and now - _active_cache[0] < _ACTIVE_TTL:
        return _active_cache[1]
    found = database(db).webhook_endpoints.find_one({"status": EndpointStatus.ACTIVE}, {"_id": 1}) is not None
    _active_cache = (now, found)
    return found


# --- dispatch: audit blocks -> events and deliveries -------------------------------------


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


def dispatch_partition(partition: int, *, db: Database | None = None, page: int = DISPATCH_PAGE,
                       clock: Callable[[], datetime] = utcnow) -> Dispatch:
    """Turn the next page of ``partition``'s audit blocks into events and deliveries."""
    db = database(db)
    now = clock()
    cursor_doc = db.webhook_cursors.find_one({"_id": partition})
    cursor = cursor_doc["auditSeq"] if cursor_doc else 0
    # The head is read BEFORE the endpoints: a block at or below it committed before an
    # endpoint this read misses was registered, so skipping it loses nobody's event.
    head_doc = db.partitions.find_one({"_id": partition}, {"auditSeq": 1})
    head = head_doc.get("auditSeq", 0) if head_doc else 0
    result = Dispatch()
    if head <= cursor:
        return result
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
    views = job_details(list(jobs.values()), db=db)
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
    cursor_doc = db.webhook_cursors.find_one({"_id": chain})
    cursor = cursor_doc["auditSeq"] if cursor_doc else 0
    head_doc = db.partitions.find_one({"_id": chain}, {"auditSeq": 1})
    head = head_doc.get("auditSeq", 0) if head_doc else 0
    result = Dispatch()
    if head <= cursor:
        return result
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


def due_deliveries(db: Database | None = None, limit: int = SWEEP_LIMIT,
                   clock: Callable[[], datetime] = utcnow) -> list[str]:
    """Pending deliveries whose attempt is due (a lost message, an expired lease, a long backoff)."""
    cur = (database(db).webhook_deliveries
           .find({"status": DeliveryStatus.PENDING, "nextAttemptAt": {"$lte": clock()}}, {"_id": 1})
           .sort("nextAttemptAt", 1).limit(limit))
    return [d["_id"] for d in cur]


# --- delivery -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one call of :func:`deliver_one` did; ``retry_in`` seconds when another attempt is scheduled."""

    delivery_id: str
    claimed: bool
    status: str | None = None
    http_status: int | None = None
    retry_in: float | None = None


class Sender(Protocol):
    """:func:`services.webhook_http.post`'s shape: one attempt, never raising for the network."""

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout: float, *,
                 allow_private: bool = False) -> Attempt: ...


def _fail_pending(db: Database, endpoint_id: str, reason: str, now: datetime) -> None:
    db.webhook_deliveries.update_many(
        {"endpointId": endpoint_id, "status": DeliveryStatus.PENDING},
        {"$set": {"status": DeliveryStatus.FAILED, "lastError": reason, "updatedAt": now}, "$unset": {"lease": ""}})


def _claim(db: Database, delivery_id_: str, now: datetime, lease_seconds: float) -> dict[str, Any] | None:
    token = uuid.uuid4().hex
    res = db.webhook_deliveries.update_one(
        {"_id": delivery_id_, "status": DeliveryStatus.PENDING, "nextAttemptAt": {"$lte": now}},
        {"$set": {"lease": token, "nextAttemptAt": now + timedelta(seconds=lease_seconds)}})
    if res.matched_count != 1:
        return None
    doc = db.webhook_deliveries.find_one({"_id": delivery_id_})
    return doc if doc is not None and doc.get("lease") == token else None


def _finish(db: Database, delivery: dict[str, Any], fields: dict[str, Any], entry: dict[str, Any]) -> bool:
    res = db.webhook_deliveries.update_one(
        {"_id": delivery["_id"], "status": DeliveryStatus.PENDING, "lease": delivery["lease"]},
        {"$set": fields, "$unset": {"lease": ""}, "$inc": {"attempts": 1},
         "$push": {"log": {"$each": [entry], "$slice": -LOG_KEEP}}})
    return res.modified_count == 1


def deliver_one(delivery_id_: str, *, timeout: float, schedule: Sequence[float], allow_private: bool,
                db: Database | None = None, send: Sender = post,
                clock: Callable[[], datetime] = utcnow) -> Outcome:
    """One attempt of one delivery, if it is due and no other worker holds it."""
    db = database(db)
    now = clock()
    delivery = _claim(db, delivery_id_, now, 2 * timeout + LEASE_MARGIN)
    if delivery is None:
        return Outcome(delivery_id_, False)
    endpoint = db.webhook_endpoints.find_one({"_id": delivery["endpointId"]})
    event = db.webhook_events.find_one({"_id": delivery["eventId"]})
    attempt_no = delivery["attempts"] + 1
    extra = {"deliveryId": delivery["_id"], "eventId": delivery["eventId"], "endpointId": delivery["endpointId"],
             "attempt": attempt_no}
    if endpoint is None or endpoint["status"] != EndpointStatus.ACTIVE or event is None:
        reason = "endpoint disabled" if event is not None else "event missing"
        _finish(db, delivery, {"status": DeliveryStatus.FAILED, "lastError": reason, "updatedAt": now},
                {"at": now, "attempt": attempt_no, "run": delivery["run"], "statusCode": None, "error": reason,
                 "durationMs": 0})
        log.info("webhook delivery dropped", extra={**extra, "reason": reason})
        return Outcome(delivery_id_, True, DeliveryStatus.FAILED)
    body = event["body"].encode()
    try:
        check_url(endpoint["url"], allow_private=allow_private)
    except UrlRefused as exc:
        attempt = Attempt(0, 0, error=f"refused: {exc.reason}")
    else:
        stamp = int(time.time())
        attempt = send(endpoint["url"], body, signed_headers(_valid_secrets(endpoint, now), event["_id"], stamp, body),
                       timeout, allow_private=allow_private)
    done = clock()
    entry = {"at": done, "attempt": attempt_no, "run": delivery["run"], "statusCode": attempt.status or None,
             "error": attempt.error, "durationMs": attempt.duration_ms}
    fields: dict[str, Any] = {"lastStatus": attempt.status or None, "lastError": attempt.error, "updatedAt": done}
    retry_in = None
    if attempt.ok:
        fields.update(status=DeliveryStatus.DELIVERED, deliveredAt=done)
    elif attempt.status == 410:
        fields.update(status=DeliveryStatus.FAILED, lastError="410 Gone: endpoint disabled")
    else:
        retry_in = next_delay(attempt_no, schedule, attempt.retry_after)
        if retry_in is None:
            fields.update(status=DeliveryStatus.FAILED)
        else:
            fields["nextAttemptAt"] = done + timedelta(seconds=retry_in)
    if not _finish(db, delivery, fields, entry):
        # The lease was taken over (this attempt outlived it) or the delivery replayed/failed meanwhile.
        log.warning("webhook attempt finished after losing its lease", extra={**extra, "httpStatus": attempt.status})
        return Outcome(delivery_id_, True, None, attempt.status)
    if attempt.status == 410:
        res = db.webhook_endpoints.update_one(
            {"_id": endpoint["_id"], "status": EndpointStatus.ACTIVE},
            {"$set": {"status": EndpointStatus.DISABLED, "disabledReason": "the receiver answered 410 Gone",
                      "disabledAt": done, "updatedAt": done}})
        if res.modified_count:
            log.warning("webhook endpoint disabled by a 410 answer", extra=extra)
        _fail_pending(db, endpoint["_id"], "endpoint disabled: the receiver answered 410 Gone", done)
        _forget_active()
    status = fields.get("status", DeliveryStatus.PENDING)
    log.info("webhook attempt", extra={**extra, "httpStatus": attempt.status, "error": attempt.error,
                                       "durationMs": attempt.duration_ms, "status": status, "retryIn": retry_in})
    return Outcome(delivery_id_, True, status, attempt.status, retry_in)


# --- the delivery log and replay ---------------------------------------------------------


def delivery_view(delivery: dict[str, Any]) -> dict[str, Any]:
    return {
        "deliveryId": delivery["_id"],
        "eventId": delivery["eventId"],
        "type": delivery["type"],
        "jobId": delivery.get("jobId"),
        "statementId": delivery.get("statementId"),
        "status": delivery["status"],
        "attempts": delivery["attempts"],
        "run": delivery.get("run", 1),
        "nextAttemptAt": iso(delivery["nextAttemptAt"])
        if delivery["status"] == DeliveryStatus.PENDING and delivery.get("nextAttemptAt") else None,
        "deliveredAt": iso(delivery["deliveredAt"]) if delivery.get("deliveredAt") else None,
        "lastStatus": delivery.get("lastStatus"),
        "lastError": delivery.get("lastError"),
        "createdAt": iso(delivery["createdAt"]),
        "log": [{"at": iso(e["at"]), "attempt": e["attempt"], "run": e.get("run", 1),
                 "statusCode": e.get("statusCode"), "error": e.get("error"), "durationMs": e.get("durationMs", 0)}
                for e in reversed(delivery.get("log", []))],
    }


def list_deliveries(endpoint_id: str, limit: int, cursor: str | None,
                    db: Database | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """An endpoint's deliveries, newest first (index ``endpoint_recent``)."""
    return cursor_page(database(db), "webhook_deliveries", {"endpointId": endpoint_id}, limit, cursor)


def deliveries_of_job(job_id: str, endpoints_read: int = 100,
                      db: Database | None = None) -> list[dict[str, Any]]:
    """Every delivery of ``job_id``'s events: ids derived from (event, endpoint), one ``$in`` read.

    The endpoints are the newest ``endpoints_read`` (a deployment has a handful).
    """
    db = database(db)
    endpoints = [e["_id"] for e in db.webhook_endpoints.find({}, {"_id": 1}).sort("createdAt", -1)
                 .limit(endpoints_read)]
    families = {event_id(job_id, t) for t in EVENT_TYPES}
    ids = [delivery_id(evt, endpoint) for evt in sorted(families) for endpoint in endpoints]
    if not ids:
        return []
    return sorted(db.webhook_deliveries.find({"_id": {"$in": ids}}), key=lambda d: (d["createdAt"], d["_id"]))


def failing_deliveries(limit: int = 50, db: Database | None = None) -> list[dict[str, Any]]:
    """Deliveries given up (``failed``) and those retrying after a failed attempt, on the ``due`` index."""
    db = database(db)
    failed = list(db.webhook_deliveries.find({"status": DeliveryStatus.FAILED}).sort("nextAttemptAt", -1)
                  .limit(limit))
    retrying = list(db.webhook_deliveries.find({"status": DeliveryStatus.PENDING, "attempts": {"$gte": 1}})
                    .sort("nextAttemptAt", 1).limit(limit))
    return failed + retrying


def replay(endpoint_id: str, delivery_id_: str, actor: dict[str, str], request_id: str | None,
           db: Database | None = None, clock: Callable[[], datetime] = utcnow, *,
           submission: operator_audit.Submission | None = None) -> dict[str, Any] | None:
    """Start a new run of attempts now (same event id, same body), whatever the delivery's status.

    ``None`` when there is no such delivery of that endpoint; :class:`WebhookDisabled`
    when the endpoint no longer receives.
    """
    db = database(db)
    endpoint = db.webhook_endpoints.find_one({"_id": endpoint_id}, {"status": 1})
    if endpoint is None:
        return None
    if endpoint["status"] != EndpointStatus.ACTIVE:
        raise WebhookDisabled(endpoint_id)
    now = clock()

    def apply(session: Any) -> operator_audit.Change | None:
        before = db.webhook_deliveries.find_one({"_id": delivery_id_, "endpointId": endpoint_id},
                                                {"status": 1, "attempts": 1, "run": 1}, session=session)
        if before is None:
            return None
        db.webhook_deliveries.update_one({"_id": delivery_id_}, {
            "$set": {"status": DeliveryStatus.PENDING, "attempts": 0, "nextAttemptAt": now, "updatedAt": now},
            "$inc": {"run": 1}, "$unset": {"lease": "", "deliveredAt": ""}}, session=session)
        after = db.webhook_deliveries.find_one({"_id": delivery_id_}, session=session)
        return operator_audit.Change({"status": before["status"], "run": before.get("run", 1)},
                                     {"status": DeliveryStatus.PENDING, "run": after["run"]}, after)

    done = operator_audit.record(db, "webhook.replay", actor, {"type": "webhook_delivery", "id": delivery_id_},
                                 request_id, apply, submission=submission)
    return None if done is None else done[0].result
