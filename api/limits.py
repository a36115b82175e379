"""Rate limits: by tier on the money and job routes, per address and email on login.

flask-limiter 4 with its storage in Redis (``REDIS_URL``), so every gunicorn worker
of every web host shares one count, and the moving-window strategy, so a burst at
a window boundary cannot pass twice the limit.

Which limit applies is decided per view from the declarations of ``api.spec``:

- tier: views of the wallet, premium, subscription, gifts and jobs blueprints
  declared ``limited=True``; ``RATE_LIMITS_<ROLE>`` by the caller's *stored* role
  (``g.principal``, see ``api/auth.py``: admin exempt, anonymous = free), keyed by
  user id, else client address; one budget per caller across all these routes.
- ``auth.register``: ``RATE_LIMITS_AUTH`` twice, keyed by client address and by
  the e-mail of the JSON body (hashed).
- ``auth.login`` is not limited here: only *failed* logins are throttled, per
  e-mail and per address, by ``api/login_throttle.py`` (a success never counts).
- ``payments.webhook``: ``RATE_LIMITS_WEBHOOK`` for the (single) provider.
- everything else (health, docs, ``/metrics``, admin, me): not limited.

The client address is ``request.remote_addr``; ``X-Forwarded-For`` counts only
through ``werkzeug.middleware.proxy_fix.ProxyFix`` with ``TRUSTED_PROXIES`` hops
(installed by the app factory), so a client cannot pick its own bucket.

Every answer of a limited route carries ``X-RateLimit-Limit``, ``-Remaining`` and
``-Reset`` (Unix time at which a slot frees); a refusal is ``429`` problem+json
``RATE_LIMITED`` with ``Retry-After`` in seconds.

If Redis fails the check is skipped (fail open), a WARNING is logged, a counter
is incremented, and checks pause for :data:`BREAKER_SECONDS` so an unreachable
Redis costs one timeout per process per pause instead of one per request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limit, Limiter, RateLimitExceeded
from werkzeug.exceptions import HTTPException

from api.errors import problem
from infra import metrics
from infra.config import Settings
from ledger.states import Role

log = logging.getLogger("purser.ratelimit")

TIER_BLUEPRINTS = frozenset({"wallet", "premium", "subscription", "gifts", "jobs"})
AUTH_ENDPOINTS = frozenset({"auth.register"})
WEBHOOK_ENDPOINT = "payments.webhook"
STRATEGY = "moving-window"
KEY_PREFIX = "purser"
BREAKER_SECONDS = 5.0
STORAGE_TIMEOUT_SECONDS = 0.5

# Limit scopes; also the ``limit`` label of the refusal counter.
SCOPE_TIER = "tier"
SCOPE_AUTH_ADDRESS = "auth-address"
SCOPE_AUTH_EMAIL = "auth-email"
SCOPE_WEBHOOK = "webhook"


def storage_uri(redis_url: str) -> str:
    """The limits storage URI of a redis-py URL (``unix://`` is spelled ``redis+unix://``)."""
    if redis_url.startswith("unix://"):
        return "redis+unix://" + redis_url[len("unix://"):]
    return redis_url


class PurserLimiter(Limiter):
    """flask-limiter that fails open on storage errors with a warning and a short pause.

    flask-limiter's own ``swallow_errors`` logs each failure as an ERROR with a
    traceback (a Sentry event per request while Redis is down) and retries Redis on
    every request; this subclass catches the error itself instead.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open_until = 0.0
        self._breaker_lock = threading.Lock()

    def storage_failed(self, exc: BaseException) -> None:

        metrics.RATE_LIMIT_STORAGE_ERRORS.inc()
        with self._breaker_lock:
            self._open_until = time.monotonic() + BREAKER_SECONDS
        log.warning("rate-limit storage unreachable; requests pass unchecked (fail open)",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:300], "pauseSeconds": BREAKER_SECONDS})

    @property
    def storage_paused(self) -> bool:
        return time.monotonic() < self._open_until

    def _check_request_limit(self, callable_name: str | None = None, in_middleware: bool = True) -> None:
        if self.storage_paused:
            return
        try:
            super()._check_request_limit(callable_name, in_middleware)
        except RateLimitExceeded:
            raise
        except HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - any storage failure fails open
            self.context.reset()
            self.storage_failed(exc)


def _view(endpoint: str | None) -> Any:
    return current_app.view_functions.get(endpoint or "") if endpoint else None


def route_class(endpoint: str | None) -> str | None:
    """``tier``, ``auth``, ``webhook`` or None for the view serving ``endpoint``."""
    if not endpoint:
        return None
    if endpoint in AUTH_ENDPOINTS:
        return "auth"
    if endpoint == WEBHOOK_ENDPOINT:
        return "webhook"
    blueprint = endpoint.split(".", 1)[0] if "." in endpoint else None
    view = _view(endpoint)
    if blueprint in TIER_BLUEPRINTS and view is not None and getattr(view, "purser_limited", False):
        return "tier"
    return None


def client_address() -> str:
    return request.remote_addr or "unknown"


def _principal() -> Any:
    return getattr(g, "principal", None)


def tier_of_caller() -> str:
    principal = _principal()
    return principal.role if principal is not None else "anonymous"


def _tier_key() -> str:
    principal = _principal()
    if principal is not None:
        return f"user:{principal.user_id}"
    return f"addr:{client_address()}"


def _address_key() -> str:
    return f"addr:{client_address()}"


def body_email() -> str | None:
    """The lower-cased ``email`` of a JSON body, or None (not JSON, absent, too large)."""
    cached = g.get("_limit_email", False)
    if cached is not False:
        return cached
    email: str | None = None
    try:
        if (request.mimetype or "").lower() == "application/json":
            data = json.loads(request.get_data(cache=True) or b"null")
            value = data.get("email") if isinstance(data, dict) else None
            if isinstance(value, str) and value.strip():
                email = value.strip().lower()
    except Exception:  # noqa: BLE001 - the view reports a bad body; here it only means "no email"
        email = None
    g._limit_email = email
    return email


def _email_key() -> str:
    # Hashed: the limiter's Redis keys should not hold e-mail addresses.
    email = body_email() or ""
    return "email:" + hashlib.sha256(email.encode()).hexdigest()[:32]


def build_limiter(app: Flask, settings: Settings) -> PurserLimiter:
    tier_limits = {Role.FREE: settings.rate_limits_free, Role.PREMIUM: settings.rate_limits_premium,
                   Role.CREATOR: settings.rate_limits_creator}

    def tier_limit() -> str:
        principal = _principal()
        role = principal.role if principal is not None else Role.FREE
        return tier_limits.get(role, settings.rate_limits_free)

    def not_tier() -> bool:
        principal = _principal()
        return route_class(request.endpoint) != "tier" or (principal is not None and principal.is_admin)

    def not_auth() -> bool:
        return route_class(request.endpoint) != "auth"

    def not_auth_or_no_email() -> bool:
        return not_auth() or body_email() is None

    def not_webhook() -> bool:
        return route_class(request.endpoint) != "webhook"

    defaults = [
        # One budget per caller across all tier-limited routes ("shared" scope).
        Limit(tier_limit, key_function=_tier_key, scope=SCOPE_TIER, shared=True, exempt_when=not_tier),
        # Registration, per address and per e-mail (login: api/login_throttle.py).
        Limit(lambda: settings.rate_limits_auth, key_function=_address_key, scope=SCOPE_AUTH_ADDRESS,
              exempt_when=not_auth),
        Limit(lambda: settings.rate_limits_auth, key_function=_email_key, scope=SCOPE_AUTH_EMAIL,
              exempt_when=not_auth_or_no_email),
        Limit(lambda: settings.rate_limits_webhook, key_function=lambda: "provider", scope=SCOPE_WEBHOOK,
              shared=True, exempt_when=not_webhook),
    ]
    limiter = PurserLimiter(
        key_func=_address_key,
        default_limits=defaults,  # type: ignore[arg-type]
        strategy=STRATEGY,
        storage_uri=storage_uri(settings.redis_url),
        storage_options={"socket_timeout": STORAGE_TIMEOUT_SECONDS,
                         "socket_connect_timeout": STORAGE_TIMEOUT_SECONDS},
        key_prefix=KEY_PREFIX,
        headers_enabled=False,  # written by _rate_headers below, which cannot fail a request
        swallow_errors=False,  # PurserLimiter fails open itself (see its docstring)
        in_memory_fallback_enabled=False,
        enabled=True,
    )
    limiter.init_app(app)
    return limiter


def _limit_headers(limiter: PurserLimiter) -> tuple[dict[str, str], float]:
    """The X-RateLimit headers of the current request's limit, and its reset time."""
    current = limiter.current_limit
    if current is None:
        return {}, 0.0
    reset_at, remaining = limiter.limiter.get_window_stats(current.limit, *current.request_args)
    return {"X-RateLimit-Limit": str(current.limit.amount),
            "X-RateLimit-Remaining": str(max(0, remaining)),
            "X-RateLimit-Reset": str(math.ceil(reset_at))}, float(reset_at)


def init_limits(app: Flask, settings: Settings) -> PurserLimiter | None:
    """Install the limiter on ``app`` (after the request hooks that set ``g.principal``)."""
    if not settings.rate_limit_enabled:
        return None
    limiter = build_limiter(app, settings)
    app.extensions["purser_limiter"] = limiter

    @app.errorhandler(RateLimitExceeded)
    def _refused(exc: RateLimitExceeded) -> Response:

        scope = getattr(exc.limit, "scope", None) or "unknown"
        metrics.RATE_LIMITED.labels(str(scope), tier_of_caller()).inc()
        headers: dict[str, str] = {}
        retry_after = 1
        try:
            headers, reset_at = _limit_headers(limiter)
            retry_after = max(1, math.ceil(reset_at - time.time()))
        except Exception as err:  # noqa: BLE001
            limiter.storage_failed(err)
        headers["Retry-After"] = str(retry_after)
        g.rate_headers_done = True
        # The access line records the 429; flask-limiter logs the key that was refused.
        log.debug("rate limit refused a request",
                  extra={"limit": scope, "tier": tier_of_caller(), "retryAfter": retry_after})
        return problem(429, "RATE_LIMITED", f"Too many requests; retry in {retry_after} s.", headers=headers)

    @app.after_request
    def _rate_headers(response: Response) -> Response:
        if g.get("rate_headers_done") or limiter.current_limit is None or limiter.storage_paused:
            return response
        try:
            for name, value in _limit_headers(limiter)[0].items():
                response.headers[name] = value
        except Exception as exc:  # noqa: BLE001 - headers are advisory; never fail the answer
            limiter.storage_failed(exc)
        return response

    return limiter
