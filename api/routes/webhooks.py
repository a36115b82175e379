"""Job webhook endpoints (admin): register, list, disable, rotate the secret, read the log, replay.

What is delivered and how is ``services/webhook_*.py``; every change an admin makes
here is recorded in the operator audit chain.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, g, jsonify

from api.app_settings import settings
from api.auth import current
from api.errors import ApiError
from api.jsonbody import parse_body, parse_query
from api.routes.common import bad_cursor
from api.spec import endpoint
from api.webhook_schemas import (
    WebhookDeliveryOut,
    WebhookDeliveryPage,
    WebhookEndpointCreated,
    WebhookEndpointIn,
    WebhookEndpointOut,
    WebhookEndpointPage,
    WebhookPageQuery,
)
from ledger.money import is_user_id
from ledger.states import Role
from services import operator_audit, webhook_endpoints, webhook_events, webhook_log
from services.queries import BadCursor
from services.store import process_db
from services.webhook_http import UrlRefused

bp = Blueprint("webhooks", __name__, url_prefix="/api/admin/webhooks")
ADMIN = (Role.ADMIN,)
# Per status, the problem codes a view gives (api/spec.py documents them).
NOT_FOUND = {404: ("WEBHOOK_NOT_FOUND",)}


def _actor() -> dict[str, str]:
    me = current()
    return operator_audit.actor_of(me.user_id, me.role)


def _not_found() -> ApiError:
    return ApiError(404, "WEBHOOK_NOT_FOUND", "No such webhook endpoint.")


def _endpoint(webhook_id: str) -> dict[str, Any]:
    found = webhook_endpoints.get_endpoint(process_db(), webhook_id) if is_user_id(webhook_id) else None
    if found is None:
        raise _not_found()
    return found


def _parse_webhook() -> WebhookEndpointIn:
    try:
        return parse_body(WebhookEndpointIn)
    except ApiError as exc:
        errors = exc.extra.get("errors", [])
        if exc.code == "VALIDATION_FAILED" and any(e["field"].startswith("eventTypes.") and e["type"] == "literal_error"
                                                    for e in errors):
            raise ApiError(422, "UNKNOWN_EVENT_TYPE", "eventTypes: one of " + ", ".join(webhook_events.EVENT_TYPES),
                           extra={"errors": errors}) from None
        raise


@endpoint(bp, "POST", "", summary="Register a job webhook endpoint; its secret is shown once", body=WebhookEndpointIn,
          response=WebhookEndpointCreated, status=201, roles=ADMIN,
          errors={422: ("UNKNOWN_EVENT_TYPE", "WEBHOOK_URL_INVALID", "WEBHOOK_URL_PRIVATE")})
def create() -> Any:
    body = _parse_webhook()
    try:
        doc, secret = webhook_endpoints.register(process_db(), body.url, body.eventTypes, body.description, _actor(),
                                        g.request_id, allow_private=settings().webhook_allow_private)
    except UrlRefused as exc:
        raise ApiError(422, exc.code, exc.reason) from None
    return jsonify({**webhook_endpoints.endpoint_view(doc), "secret": secret}), 201, {
        "Location": f"/api/admin/webhooks/{doc['_id']}"}


@endpoint(bp, "GET", "", summary="Webhook endpoints, newest first", query=WebhookPageQuery,
          response=WebhookEndpointPage, roles=ADMIN)
def list_all() -> Any:
    q = parse_query(WebhookPageQuery)
    try:
        items, next_cursor = webhook_endpoints.list_endpoints(process_db(), q.limit, q.cursor)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    return jsonify(items=[webhook_endpoints.endpoint_view(e) for e in items], nextCursor=next_cursor)


@endpoint(bp, "GET", "/<webhookId>", summary="One webhook endpoint", response=WebhookEndpointOut, roles=ADMIN,
          errors=NOT_FOUND)
def get_one(webhookId: str) -> Any:  # noqa: N803
    return jsonify(webhook_endpoints.endpoint_view(_endpoint(webhookId)))


@endpoint(bp, "DELETE", "/<webhookId>", summary="Disable a webhook endpoint (its delivery log is kept)",
          response=WebhookEndpointOut, roles=ADMIN, errors=NOT_FOUND)
def delete(webhookId: str) -> Any:  # noqa: N803
    done = webhook_endpoints.disable(process_db(), webhookId, _actor(), g.request_id) if is_user_id(webhookId) else None
    if done is None:
        raise _not_found()
    return jsonify(webhook_endpoints.endpoint_view(done))


@endpoint(bp, "POST", "/<webhookId>/rotate",
          summary="New signing secret; the previous one keeps signing for WEBHOOK_SECRET_GRACE_HOURS",
          response=WebhookEndpointCreated, roles=ADMIN, errors=NOT_FOUND)
def rotate(webhookId: str) -> Any:  # noqa: N803
    grace = timedelta(hours=settings().webhook_secret_grace_hours)
    done = (webhook_endpoints.rotate(process_db(), webhookId, _actor(), g.request_id, grace)
            if is_user_id(webhookId) else None)
    if done is None:
        raise _not_found()
    doc, secret = done
    return jsonify({**webhook_endpoints.endpoint_view(doc), "secret": secret})


@endpoint(bp, "GET", "/<webhookId>/deliveries", summary="An endpoint's deliveries with their attempts, newest first",
          query=WebhookPageQuery, response=WebhookDeliveryPage, roles=ADMIN, errors=NOT_FOUND)
def deliveries(webhookId: str) -> Any:  # noqa: N803
    q = parse_query(WebhookPageQuery)
    _endpoint(webhookId)
    try:
        items, next_cursor = webhook_log.list_deliveries(process_db(), webhookId, q.limit, q.cursor)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    return jsonify(items=[webhook_log.delivery_view(d) for d in items], nextCursor=next_cursor)


@endpoint(bp, "POST", "/<webhookId>/deliveries/<deliveryId>/replay",
          summary="Deliver again now (same event id and body), whatever the delivery's status",
          response=WebhookDeliveryOut, status=202, roles=ADMIN,
          errors={404: ("DELIVERY_NOT_FOUND",), 409: ("WEBHOOK_DISABLED",)})
def replay(webhookId: str, deliveryId: str) -> Any:  # noqa: N803
    if not (is_user_id(webhookId) and is_user_id(deliveryId)):
        raise ApiError(404, "DELIVERY_NOT_FOUND", "No such delivery.")
    try:
        done = webhook_log.replay(process_db(), webhookId, deliveryId, _actor(), g.request_id)
    except webhook_log.WebhookDisabled:
        raise ApiError(409, "WEBHOOK_DISABLED", "The endpoint is disabled; register it again.") from None
    if done is None:
        raise ApiError(404, "DELIVERY_NOT_FOUND", "No such delivery.")
    from tasks.webhooks import enqueue  # the due sweep of beat's tick would find it too

    enqueue(deliveryId)
    return jsonify(webhook_log.delivery_view(done)), 202
