"""Webhook endpoints and their failing deliveries, with replay."""

from __future__ import annotations

from typing import Any

from flask import g

from api.console import forms
from api.console.blueprint import actor, bp, done, page
from api.console.lookup import checked_id
from api.errors import ApiError
from services import operator_audit, webhook_endpoints, webhook_log
from services.store import process_db

ENDPOINTS_SHOWN = 100


@bp.route("/webhooks", methods=["GET"])
def webhook_list() -> Any:
    endpoints, _ = webhook_endpoints.list_endpoints(process_db(), ENDPOINTS_SHOWN, None)
    return page("webhooks.html", endpoints=endpoints, failing=webhook_log.failing_deliveries(process_db()))


@bp.route("/webhooks/<webhook_id>/deliveries/<delivery_id>/replay", methods=["POST"])
def replay(webhook_id: str, delivery_id: str) -> Any:
    try:
        replayed = webhook_log.replay(process_db(), checked_id(webhook_id), checked_id(delivery_id), actor(),
                                      g.request_id, submission=forms.submission())
    except operator_audit.AlreadyDone:
        return done("console.webhook_list", "already")
    except webhook_log.WebhookDisabled:
        raise ApiError(409, "WEBHOOK_DISABLED", "The endpoint is disabled; register it again.") from None
    if replayed is None:
        raise ApiError(404, "DELIVERY_NOT_FOUND", "No such delivery.")
    from tasks.webhooks import enqueue  # as the API's replay: the due sweep of beat's tick would find it too

    enqueue(delivery_id)
    return done("console.webhook_list", "replayed")
