"""What the console's forms send: the one-time key, the operator's reason, amounts.

Fields are checked as strictly as the API's JSON bodies (``api/request_schemas.py``): a
missing or malformed field is a 422 ``VALIDATION_FAILED`` naming it, and nothing
is applied.
"""

from __future__ import annotations

import re
import uuid

from flask import request

from api.app_settings import settings
from api.errors import ApiError
from services.operator_audit import Submission

FORM_KEY = re.compile(r"[0-9a-f]{32}", re.ASCII)
AMOUNT = re.compile(r"[1-9][0-9]{0,17}", re.ASCII)
REASON_MAX = 200


def new_form_key() -> str:
    """The one-time key a rendered form carries: submitting it twice does one thing."""
    return uuid.uuid4().hex


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "VALIDATION_FAILED", f"{field}: {message}",
                    extra={"errors": [{"field": field, "message": message, "type": "form"}]})


def form_key() -> str:
    key = request.form.get("form_key", "")
    if not FORM_KEY.fullmatch(key):
        raise invalid("form_key", "missing or malformed; reload the page")
    return key


def reason() -> str:
    text = " ".join(request.form.get("reason", "").split())
    if not 3 <= len(text) <= REASON_MAX or not text.isprintable():
        raise invalid("reason", f"say why in 3 to {REASON_MAX} printable characters")
    return text


def submission() -> Submission:
    """The reason and one-time key of an operator action form (audited with the action)."""
    return Submission(reason(), form_key(), settings().idempotency_ttl_hours)


def optional_amount(field: str = "amount") -> int | None:
    """A whole number of coins, or None when the field is left empty."""
    raw = request.form.get(field, "").strip()
    if not raw:
        return None
    if not AMOUNT.fullmatch(raw):
        raise invalid(field, "a whole number of coins, at least 1")
    return int(raw)
