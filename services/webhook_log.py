"""The webhook delivery log an admin reads, and replay (a new run of attempts, audited)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pymongo.database import Database

from ledger.timeutil import iso, utcnow
from services import operator_audit
from services.queries import page as cursor_page
from services.webhook_events import EVENT_TYPES, DeliveryStatus, EndpointStatus, delivery_id, event_id


class WebhookDisabled(RuntimeError):
    pass


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


def list_deliveries(db: Database, endpoint_id: str, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]],
                    str | None]:
    """An endpoint's deliveries, newest first (index ``endpoint_recent``)."""
    return cursor_page(db, "webhook_deliveries", {"endpointId": endpoint_id}, limit, cursor)


def deliveries_of_job(db: Database, job_id: str, endpoints_read: int = 100) -> list[dict[str, Any]]:
    """Every delivery of ``job_id``'s events: ids derived from (event, endpoint), one ``$in`` read.

    The endpoints are the newest ``endpoints_read`` (a deployment has a handful).
    """
    endpoints = [e["_id"] for e in db.webhook_endpoints.find({}, {"_id": 1}).sort("createdAt", -1)
                 .limit(endpoints_read)]
    families = {event_id(job_id, t) for t in EVENT_TYPES}
    ids = [delivery_id(evt, endpoint) for evt in sorted(families) for endpoint in endpoints]
    if not ids:
        return []
    return sorted(db.webhook_deliveries.find({"_id": {"$in": ids}}), key=lambda d: (d["createdAt"], d["_id"]))


def failing_deliveries(db: Database, limit: int = 50) -> list[dict[str, Any]]:
    """Deliveries given up (``failed``) and those retrying after a failed attempt, on the ``due`` index."""
    failed = list(db.webhook_deliveries.find({"status": DeliveryStatus.FAILED}).sort("nextAttemptAt", -1)
                  .limit(limit))
    retrying = list(db.webhook_deliveries.find({"status": DeliveryStatus.PENDING, "attempts": {"$gte": 1}})
                    .sort("nextAttemptAt", 1).limit(limit))
    return failed + retrying


def replay(db: Database, endpoint_id: str, delivery_id_: str, actor: dict[str, str], request_id: str | None,
           clock: Callable[[], datetime] = utcnow, *,
           submission: operator_audit.Submission | None = None) -> dict[str, Any] | None:
    """Start a new run of attempts now (same event id, same body), whatever the delivery's status.

    ``None`` when there is no such delivery of that endpoint; :class:`WebhookDisabled`
    when the endpoint no longer receives.
    """
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

