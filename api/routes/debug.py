"""Deliberate failures for checking error reporting end to end (never in production).

Registered only when ``APP_ENV`` is not ``production`` and kept out of the OpenAPI
document (the contract tests must not call it).
"""

from __future__ import annotations

from flask import Blueprint, request

bp = Blueprint("debug", __name__, url_prefix="/api/test")


class DeliberateError(RuntimeError):
    """Raised on purpose by ``/api/test/error``."""


@bp.route("/error", methods=["GET", "POST"])
def error() -> None:
    # The body is echoed into the exception so tests can prove that error reports
    # (logs, Sentry) mask whatever secrets a request carried.
    body = request.get_data(cache=True)[:500].decode("utf-8", "replace")
    raise DeliberateError(f"deliberate test error; body={body}")
