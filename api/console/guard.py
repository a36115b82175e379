"""Who may use the console and how its pages protect themselves.

- A session is a random token in a cookie (HttpOnly, SameSite=Strict, Secure and
  ``__Host-`` in production) naming a server-side session in Redis
  (``services/console_sessions.py``): logout and expiry really end it.
- Every request re-checks the operator's *stored* role through the API's role cache
  (``api.auth.stored_role``), so a demoted admin is out within ``ROLE_CACHE_SECONDS``.
- Every POST carries the session's CSRF token (synchronizer token, compared in
  constant time) and, when the browser sends one, a same-origin ``Origin``; the login
  form, which has no session yet, uses a double-submit cookie instead.
- Every answer carries a Content-Security-Policy without inline script or style, and
  refuses framing: hostile text that escaped escaping would still run nothing.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import Response, g, redirect, request, url_for

from api.app_settings import settings
from api.auth import Principal, stored_role
from api.errors import ApiError
from infra import context
from infra.redis_client import get_redis
from ledger.states import Role
from services import console_sessions
from services.console_sessions import ConsoleSession

LOGIN_CSRF_COOKIE = "purser-console-login"
OPEN_ENDPOINTS = frozenset({"console.login", "console.static"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin",
                    "Cross-Origin-Opener-Policy": "same-origin", "Cache-Control": "no-store"}


def cookie_name() -> str:
    # __Host-: the browser keeps it only when Secure, host-only and Path=/ (no subdomain can plant one).
    return "__Host-purser-console" if settings().is_production else "purser-console"


def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=settings().is_production,
                        httponly=True, samesite="Strict")


def _unavailable() -> ApiError:
    return ApiError(503, "SERVICE_UNAVAILABLE", "The session store is unavailable; retry shortly.",
                    headers={"Retry-After": "2"})


def start_session(response: Response, user_id: str) -> None:
    """Log ``user_id`` in: a new server-side session and its cookie on ``response``."""
    s = settings()
    try:
        token, _ = console_sessions.open_session(get_redis(), user_id, s.console_session_idle_seconds)
    except Exception:  # noqa: BLE001 - any Redis failure: no session, say so
        raise _unavailable() from None
    set_cookie(response, cookie_name(), token, max_age=s.console_session_max_seconds)


def end_session(response: Response) -> None:
    try:
        console_sessions.close_session(get_redis(), request.cookies.get(cookie_name(), ""))
    except Exception:  # noqa: BLE001 - the cookie is dropped below; the key expires on its own
        pass
    response.delete_cookie(cookie_name(), path="/", secure=settings().is_production, httponly=True,
                           samesite="Strict")


def _load() -> ConsoleSession | None:
    s = settings()
    try:
        return console_sessions.load_session(get_redis(), request.cookies.get(cookie_name(), ""),
                                             s.console_session_idle_seconds, s.console_session_max_seconds)
    except Exception:  # noqa: BLE001 - fail closed: no store, no session
        raise _unavailable() from None


def same_origin() -> bool:
    """False when the browser says the request came from another origin (scheme, host and port)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    here = urlsplit(request.host_url)
    there = urlsplit(origin)
    return (there.scheme, there.netloc) == (here.scheme, here.netloc)


def csrf_failed() -> ApiError:
    return ApiError(403, "CSRF_FAILED", "The form is missing its security token or came from another site; "
                                        "reload the page and submit it again.")


def login_csrf_token() -> str:
    """The login form's token: the cookie's value when the browser has one, else a new one."""
    return request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)


def check_login_csrf() -> None:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    sent = request.form.get("csrf_token", "")
    if not (same_origin() and cookie and hmac.compare_digest(cookie, sent)):
        raise csrf_failed()


def require_operator() -> Response | None:
    """The console's before-request hook: a live session of a stored admin, and the CSRF check."""
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    session = _load()
    if session is None:
        if request.method == "GET":
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        raise ApiError(401, "UNAUTHORIZED", "Your console session has ended; log in again.")
    if stored_role(session.user_id, settings().role_cache_seconds) != Role.ADMIN:
        console_sessions.close_session(get_redis(), request.cookies.get(cookie_name(), ""))  # demoted: out
        raise ApiError(403, "FORBIDDEN", "The console is for admins.")
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        if not (same_origin() and hmac.compare_digest(session.csrf, sent)):
            raise csrf_failed()
    g.console = session
    g.principal = Principal(session.user_id, Role.ADMIN)  # the access log's userId
    context.bind(userId=session.user_id)
    return None


def secure_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response
