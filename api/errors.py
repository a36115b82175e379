"""RFC 9457 problem details for every error the API can give.

Every error leaves as ``application/problem+json`` with a stable ``code`` and the
request id, including 404/405/413/415 raised by Werkzeug and unexpected 500s; a
stack trace or an HTML page never reaches a client.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, g
from werkzeug.exceptions import HTTPException

from services.idempotency import outcome_unknown
from services.store import StoreError

log = logging.getLogger("purser.api")

PROBLEM_JSON = "application/problem+json"

_HTTP_CODES = {
    400: ("BAD_REQUEST", "Bad request"),
    401: ("UNAUTHORIZED", "Authentication required"),
    403: ("FORBIDDEN", "Forbidden"),
    404: ("NOT_FOUND", "Not found"),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed"),
    409: ("CONFLICT", "Conflict"),
    413: ("PAYLOAD_TOO_LARGE", "Request body too large"),
    415: ("UNSUPPORTED_MEDIA_TYPE", "Content type must be application/json"),
    422: ("VALIDATION_FAILED", "Request body is invalid"),
    429: ("RATE_LIMITED", "Too many requests"),
    500: ("INTERNAL_ERROR", "Internal server error"),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable"),
}


# Every problem code the API answers with, and what it means: the OpenAPI document lists
# them per answer (api/spec.py), tests/api/test_openapi_codes.py fails on a code missing here.
PROBLEM_CODES: dict[str, str] = {
    # generic, by status
    "BAD_REQUEST": "The request could not be read.",
    "UNAUTHORIZED": "No bearer token, a token that is invalid or expired, or an account that no longer exists.",
    "FORBIDDEN": "The caller's stored role does not allow this operation.",
    "NOT_FOUND": "No such resource (or no route for this path).",
    "METHOD_NOT_ALLOWED": "The path does not accept this method (see Allow).",
    "CONFLICT": "Conflict.",
    "PAYLOAD_TOO_LARGE": "The body is larger than 16 KB.",
    "UNSUPPORTED_MEDIA_TYPE": "The body must be sent as application/json.",
    "VALIDATION_FAILED": "A field is missing, unknown or of the wrong type or shape (the `errors` list names "
                         "each); amounts and counts must be JSON integers, `1.0` and `\"1\"` are refused.",
    "RATE_LIMITED": "Too many requests for the caller's tier; retry after Retry-After seconds.",
    "INTERNAL_ERROR": "The server could not complete the request.",
    "SERVICE_UNAVAILABLE": "A dependency is unavailable or the outcome of a write is unknown; retry (money "
                           "requests with the same Idempotency-Key).",
    "BACKLOG_FULL": "Settlement of this request's wallet is behind by more than the backlog limit; nothing "
                    "was stored. Retry after Retry-After seconds with the same Idempotency-Key.",
    # request shape
    "MALFORMED_JSON": "The body is not valid UTF-8 JSON (NaN, Infinity and duplicate keys are refused).",
    "IDEMPOTENCY_KEY_REQUIRED": "A money request needs an Idempotency-Key header.",
    "IDEMPOTENCY_KEY_INVALID": "The Idempotency-Key must be 1-255 printable ASCII characters without spaces.",
    "IDEMPOTENCY_KEY_REUSED": "This Idempotency-Key was already used with a different body.",
    # accounts
    "EMAIL_TAKEN": "An account with this email already exists.",
    "INVALID_CREDENTIALS": "Email or password is wrong.",
    "USER_NOT_FOUND": "No such user.",
    # business refusals at accept time
    "RECEIVER_NOT_FOUND": "The user the money would go to does not exist.",
    "SELF_TRANSFER": "The caller cannot send coins to themself.",
    "CONTENT_NOT_FOUND": "The content does not exist or is no longer offered.",
    "OWN_CONTENT": "Creators cannot unlock their own content.",
    "NO_PLAN": "The creator offers no subscription plan.",
    "SUBSCRIPTION_NOT_FOUND": "The caller has no active subscription with this id.",
    "PAYOUT_NOT_ALLOWED": "The caller's role cannot request payouts.",
    "PAYOUT_BELOW_MINIMUM": "The amount is below the deployment's payout minimum (PAYOUT_MIN_AMOUNT).",
    "SCHEDULE_ANCHOR_INVALID": "The anchor names no slot of the interval: weekly takes a weekday, monthly a day "
                               "1-28, daily none.",
    "SCHEDULE_NOT_FOUND": "The caller has no active payout schedule.",
    "INSTANT_INVALID": "asOf is not an RFC 3339 date-time with an offset.",
    "INSTANT_IN_FUTURE": "asOf is later than now.",
    "INSTANT_BEFORE_WALLET": "asOf is before the wallet was created.",
    "PERIOD_INVALID": "The period is not a month written YYYY-MM.",
    "PERIOD_IN_FUTURE": "The month has not started.",
    "PERIOD_BEFORE_WALLET": "The month ended before the wallet was created.",
    "PAYOUT_NOT_FOUND": "No such payout (or not the caller's).",
    "ORIGINAL_NOT_FOUND": "The job to refund does not exist.",
    "NOT_REFUNDABLE": "Only a settled unlock, gift, subscription charge or transfer can be refunded.",
    "JOB_NOT_FOUND": "No such job (or not the caller's).",
    # provider and job webhooks
    "INVALID_SIGNATURE": "The provider signature is missing, malformed, outside the time window or wrong.",
    "WEBHOOK_NOT_FOUND": "No such webhook endpoint.",
    "DELIVERY_NOT_FOUND": "No such delivery.",
    "WEBHOOK_DISABLED": "The webhook endpoint is disabled.",
    "UNKNOWN_EVENT_TYPE": "An event type is not one of the job event types.",
    "WEBHOOK_URL_INVALID": "The webhook URL is not a usable http(s) URL.",
    "WEBHOOK_URL_PRIVATE": "The webhook URL resolves to a private, loopback or link-local address.",
    # readiness
    "NOT_READY": "A dependency check failed (`checks` names which).",
}


def problem_example(status: int, code: str) -> dict[str, Any]:
    """A problem body as the API writes it, for the OpenAPI document's examples."""
    return {"type": problem_type(code), "title": _HTTP_CODES.get(status, ("", "Error"))[1], "status": status,
            "detail": PROBLEM_CODES.get(code, code), "code": code, "requestId": "5b0f8c8e-2c1e-4d4e-9a57-0c6f1f0e2b1a"}


def problem_type(code: str) -> str:
    return f"https://purser.dev/problems/{code.lower().replace('_', '-')}"


class ApiError(Exception):
    """An error answer with a stable code."""

    def __init__(self, status: int, code: str, detail: str, *, title: str | None = None,
                 headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or _HTTP_CODES.get(status, ("", "Error"))[1]
        self.headers = headers or {}
        self.extra = extra or {}


def problem(status: int, code: str, detail: str, *, title: str | None = None,
            headers: dict[str, str] | None = None, extra: dict[str, Any] | None = None) -> Response:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title or _HTTP_CODES.get(status, ("", "Error"))[1],
        "status": status,
        "detail": detail,
        "code": code,
        "requestId": getattr(g, "request_id", None),
    }
    body.update(extra or {})
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return problem(exc.status, exc.code, exc.detail, title=exc.title, headers=exc.headers,
                       extra=exc.extra)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code, title = _HTTP_CODES.get(status, ("HTTP_ERROR", exc.name))
        detail = exc.description or title
        if status == 404:
            detail = "No such resource."
        headers = {}
        valid = getattr(exc, "valid_methods", None)
        if status == 405 and valid:
            headers["Allow"] = ", ".join(sorted(valid))
        return problem(status, code, detail, title=title, headers=headers)

    @app.errorhandler(StoreError)
    def _store_unavailable(exc: StoreError) -> Response:
        if not outcome_unknown(exc):
            return _unexpected(exc)
        # Unreachable, timed out or a write whose outcome is unknown: the client must
        # retry with the same key (the job holds it if it was stored, nothing does if not).
        log.warning("store unreachable or outcome unknown: %s", type(exc).__name__)
        return problem(503, "SERVICE_UNAVAILABLE", "A dependency is unavailable; retry with the same "
                       "Idempotency-Key.", headers={"Retry-After": "2"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, "INTERNAL_ERROR", "The server could not complete the request.")
