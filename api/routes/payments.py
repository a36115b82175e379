"""The payment provider's signed webhooks: top-ups, and typed events (payouts, disputes)."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any

from flask import Blueprint, request
from pydantic import ValidationError

from api.app_settings import settings
from api.errors import ApiError
from api.jsonbody import parse_body, validation_problem
from api.money import accept
from api.request_schemas import DisputeData, PayoutEventData, ProviderEventIn, WebhookIn
from api.response_schemas import JobOut
from api.routes.common import require_user_wallet
from api.spec import endpoint
from ledger.operations import Chargeback, PayoutEvent, TopUp
from services.payouts import get_payout
from services.store import process_db

bp = Blueprint("payments", __name__, url_prefix="/api/payments")

SIGNATURE_HEADER = "X-Purser-Signature"
TOLERANCE_SECONDS = 300
_SIG_RE = re.compile(r"^t=(\d{1,12}),v1=([0-9a-f]{64})$")
PROVIDER_OWNER = "provider"


def sign(secret: str, timestamp: int, raw_body: bytes) -> str:
    """The header value a provider sends for ``raw_body`` at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + raw_body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def _verify_signature(secret: str) -> None:
    header = request.headers.get(SIGNATURE_HEADER, "")
    match = _SIG_RE.match(header.strip())
    if not match:
        raise ApiError(401, "INVALID_SIGNATURE", "Missing or malformed signature.")
    timestamp, given = int(match.group(1)), match.group(2)
    if abs(time.time() - timestamp) > TOLERANCE_SECONDS:
        raise ApiError(401, "INVALID_SIGNATURE", "The signature timestamp is outside the allowed window.")
    expected = sign(secret, timestamp, request.get_data(cache=True)).split("v1=", 1)[1]
    if not hmac.compare_digest(expected, given):
        raise ApiError(401, "INVALID_SIGNATURE", "The signature does not match.")


@endpoint(bp, "POST", "/webhook", summary="Provider top-up (HMAC-signed, idempotent on providerTxId)",
          body=WebhookIn, response=JobOut, status=202, auth_required=False,
          errors={401: "INVALID_SIGNATURE",
                  422: ("RECEIVER_NOT_FOUND", "IDEMPOTENCY_KEY_REUSED"), 503: "BACKLOG_FULL"},
          extra_headers={SIGNATURE_HEADER: "t=<unix>,v1=<hex hmac>"}, limited=False)
def webhook() -> Any:
    _verify_signature(settings().provider_webhook_secret)
    body = parse_body(WebhookIn)
    require_user_wallet(body.userId)
    return accept(TopUp(body.userId, body.amount, body.providerTxId), body, owner_id=body.userId,
                  key=f"provider:{body.providerTxId}", key_owner=PROVIDER_OWNER)


def _data(model: type[PayoutEventData] | type[DisputeData], data: dict[str, Any]) -> Any:
    """The event's ``data`` as its type requires (422 VALIDATION_FAILED otherwise)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc) from None


@endpoint(bp, "POST", "/events", summary="Provider events: payout.paid|failed|returned, topup.disputed "
          "(HMAC-signed like top-ups, each event id applied once)",
          body=ProviderEventIn, response=JobOut, status=202, auth_required=False,
          errors={401: "INVALID_SIGNATURE", 404: "PAYOUT_NOT_FOUND",
                  422: ("RECEIVER_NOT_FOUND", "IDEMPOTENCY_KEY_REUSED"), 503: "BACKLOG_FULL"},
          extra_headers={SIGNATURE_HEADER: "t=<unix>,v1=<hex hmac>"}, limited=False)
def events() -> Any:
    _verify_signature(settings().provider_webhook_secret)
    body = parse_body(ProviderEventIn)
    key = f"event:{body.id}"
    if body.type == "topup.disputed":
        dispute = _data(DisputeData, body.data)
        require_user_wallet(dispute.userId)
        return accept(Chargeback(dispute.userId, dispute.amount, dispute.providerTxId, body.id), body,
                      owner_id=dispute.userId, key=key, key_owner=PROVIDER_OWNER)
    event = _data(PayoutEventData, body.data)
    payout = get_payout(process_db(), event.payoutId)
    if payout is None:
        raise ApiError(404, "PAYOUT_NOT_FOUND", "No such payout.")
    user = payout["userId"]
    return accept(PayoutEvent(user, event.payoutId, body.type.removeprefix("payout."), body.id), body,
                  owner_id=user, key=key, key_owner=PROVIDER_OWNER)
