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
        "type": f"https://purser.dev/problems/{code.lower().replace('_', '-')}",
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
        # retry with the same key (the idempotency claim was kept for exactly that).
        log.warning("store unreachable or outcome unknown: %s", type(exc).__name__)
        return problem(503, "SERVICE_UNAVAILABLE", "A dependency is unavailable; retry with the same "
                       "Idempotency-Key.", headers={"Retry-After": "2"})

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return problem(500, "INTERNAL_ERROR", "The server could not complete the request.")
