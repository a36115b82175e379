"""Webhook delivery: one attempt of one delivery, and the sweep of those due.

:func:`deliver_one` makes one attempt: it claims the delivery with a lease (a guarded
update: pending, due), signs and POSTs the body, and writes the outcome under a guard
on its own lease, so two workers holding the same message (a redelivery, beat's due
sweep) never both log an attempt. A worker killed mid-attempt leaves a lease that
expires; beat's sweep (:func:`due_deliveries`) hands the delivery out again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from pymongo.database import Database

from ledger.timeutil import utcnow
from services.webhook_endpoints import disable_gone, valid_secrets
from services.webhook_events import DeliveryStatus, EndpointStatus
from services.webhook_http import Attempt, UrlRefused, check_url, next_delay, post
from services.webhook_signing import headers as signed_headers

log = logging.getLogger("purser.webhooks")

LOG_KEEP = 50  # attempts kept per delivery (newest); the count is kept in ``attempts``/``run``
SWEEP_LIMIT = 500  # due deliveries handed out per beat tick
LEASE_MARGIN = 5.0  # seconds a claimed attempt may take beyond connect + read timeouts (then: at least once)


def due_deliveries(db: Database, limit: int = SWEEP_LIMIT,
                   clock: Callable[[], datetime] = utcnow) -> list[str]:
    """Pending deliveries whose attempt is due (a lost message, an expired lease, a long backoff)."""
    cur = (db.webhook_deliveries
           .find({"status": DeliveryStatus.PENDING, "nextAttemptAt": {"$lte": clock()}}, {"_id": 1})
           .sort("nextAttemptAt", 1).limit(limit))
    return [d["_id"] for d in cur]


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


def deliver_one(db: Database, delivery_id_: str, *, timeout: float, schedule: Sequence[float], allow_private: bool,
                send: Sender = post, clock: Callable[[], datetime] = utcnow) -> Outcome:
    """One attempt of one delivery, if it is due and no other worker holds it."""
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
        attempt = send(endpoint["url"], body, signed_headers(valid_secrets(endpoint, now), event["_id"], stamp, body),
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
    if attempt.status == 410 and disable_gone(db, endpoint["_id"], done):
        log.warning("webhook endpoint disabled by a 410 answer", extra=extra)
    status = fields.get("status", DeliveryStatus.PENDING)
    log.info("webhook attempt", extra={**extra, "httpStatus": attempt.status, "error": attempt.error,
                                       "durationMs": attempt.duration_ms, "status": status, "retryIn": retry_in})
    return Outcome(delivery_id_, True, status, attempt.status, retry_in)
