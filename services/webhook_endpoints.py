"""Webhook endpoints: registering, disabling and rotating them (each an audited operator
change), and whether any is active (the dispatcher's cheap question after every batch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo.database import Database

from ledger.timeutil import iso, utcnow
from services import operator_audit
from services.queries import page as cursor_page
from services.webhook_events import DeliveryStatus, EndpointStatus
from services.webhook_http import check_url
from services.webhook_signing import new_secret

log = logging.getLogger("purser.webhooks")


def valid_secrets(endpoint: dict[str, Any], now: datetime) -> list[str]:
    """The secrets that sign now (a rotated-out one stays valid for its grace period)."""
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
        "activeSecrets": len(valid_secrets(endpoint, now)),
        "createdAt": iso(endpoint["createdAt"]),
        "updatedAt": iso(endpoint["updatedAt"]),
    }


def _public(endpoint: dict[str, Any] | None) -> dict[str, Any] | None:
    if endpoint is None:
        return None
    return {k: v for k, v in endpoint.items() if k != "secrets"}


def register(db: Database, url: str, event_types: Sequence[str], description: str | None, actor: dict[str, str],
             request_id: str | None, *, allow_private: bool) -> tuple[dict[str, Any], str]:
    """A new active endpoint and its secret (returned once); :class:`UrlRefused` for a bad URL."""
    check_url(url, allow_private=allow_private)
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
    forget_active()
    return doc, secret


def get_endpoint(db: Database, endpoint_id: str) -> dict[str, Any] | None:
    return db.webhook_endpoints.find_one({"_id": endpoint_id})


def list_endpoints(db: Database, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """Newest first; ``BadCursor`` (services.queries) for a cursor this API did not give."""
    return cursor_page(db, "webhook_endpoints", {}, limit, cursor)


def disable(db: Database, endpoint_id: str, actor: dict[str, str], request_id: str | None,
            reason: str = "deleted by an admin") -> dict[str, Any] | None:
    """Stop delivering to an endpoint (its log is kept); ``None`` when there is no such endpoint."""
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
    fail_pending(db, endpoint_id, f"endpoint disabled: {reason}", now)
    forget_active()
    return done[0].result


def rotate(db: Database, endpoint_id: str, actor: dict[str, str], request_id: str | None,
           grace: timedelta) -> tuple[dict[str, Any], str] | None:
    """A new secret; the ones valid now stay valid for ``grace`` (both sign meanwhile)."""
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


def forget_active() -> None:
    """An endpoint was registered or disabled: ask the store next time."""
    global _active_cache
    _active_cache = None


def any_active_endpoint(db: Database) -> bool:
    """True when an endpoint is active (cached for a couple of seconds per process)."""
    global _active_cache
    now = time.monotonic()
    if _active_cache is not None and now - _active_cache[0] < _ACTIVE_TTL:
        return _active_cache[1]
    found = db.webhook_endpoints.find_one({"status": EndpointStatus.ACTIVE}, {"_id": 1}) is not None
    _active_cache = (now, found)
    return found



def fail_pending(db: Database, endpoint_id: str, reason: str, now: datetime) -> None:
    """The endpoint no longer receives: its pending deliveries fail with ``reason``."""
    db.webhook_deliveries.update_many(
        {"endpointId": endpoint_id, "status": DeliveryStatus.PENDING},
        {"$set": {"status": DeliveryStatus.FAILED, "lastError": reason, "updatedAt": now}, "$unset": {"lease": ""}})


def disable_gone(db: Database, endpoint_id: str, now: datetime) -> bool:
    """The receiver answered 410 Gone: the endpoint is disabled and its pending deliveries
    fail; True when this call disabled it (not an earlier one)."""
    res = db.webhook_endpoints.update_one(
        {"_id": endpoint_id, "status": EndpointStatus.ACTIVE},
        {"$set": {"status": EndpointStatus.DISABLED, "disabledReason": "the receiver answered 410 Gone",
                  "disabledAt": now, "updatedAt": now}})
    fail_pending(db, endpoint_id, "endpoint disabled: the receiver answered 410 Gone", now)
    forget_active()
    return res.modified_count == 1
