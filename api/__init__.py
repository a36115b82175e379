"""Purser HTTP API: ``create_app()`` is the application factory (gunicorn "api:create_app()")."""

from __future__ import annotations

import logging
import os
import sys
import time

from flask import Flask, Response, g, request

from api import auth
from api.app_settings import settings
from api.errors import ApiError, register_error_handlers
from infra import backlog, context, observability
from infra.config import Settings, settings_or_exit
from infra.logging_setup import setup_logging
from infra.redis_client import get_redis

VERSION = "0.1.0"
MAX_BODY_BYTES = 16 * 1024

access_log = logging.getLogger("purser.access")

# Gunicorn's "App failed to load" status: a worker exiting with it makes the master
# stop too, where any other status only gets the worker respawned, forever.
GUNICORN_APP_LOAD_ERROR = 4


def create_app(settings: Settings | None = None) -> Flask:
    """The Flask app; a configuration error is one line on stderr and the process stops."""
    if settings is None:
        under_gunicorn = "gunicorn.arbiter" in sys.modules
        settings = settings_or_exit(GUNICORN_APP_LOAD_ERROR if under_gunicorn else 2)
    setup_logging(settings.log_level, settings.log_file, process="web",
                  max_bytes=settings.log_file_max_bytes, backups=settings.log_file_backups)
    app = Flask(__name__)
    app.config.update(PURSER=settings, MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.trusted_proxies:
        # X-Forwarded-For is believed only for the configured number of proxy hops.
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]

    register_error_handlers(app)
    _register_hooks(app)

    from api.routes import register_blueprints
    register_blueprints(app, settings)

    observability.init_web(app, settings)

    # After the request hooks above: the limiter keys on g.principal set by _start.
    from api.limits import init_limits
    from api.login_throttle import LoginThrottle
    from api.money import BACKLOG_GATE_EXTENSION
    init_limits(app, settings)
    app.extensions["purser_login_throttle"] = LoginThrottle(settings)
    app.extensions[BACKLOG_GATE_EXTENSION] = backlog.Gate(get_redis, backlog.limits(settings))

    from api.cli import register_cli
    register_cli(app)
    return app


def _register_hooks(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        g.request_id = context.clean_request_id(request.headers.get("X-Request-ID"))
        g.ctx_token = context.bind(requestId=g.request_id)
        g.principal = None
        # Authenticate early so the rate limiter can key on the caller's tier. The role
        # is the stored one (cached <= ROLE_CACHE_SECONDS), never the token's claim:
        # authorization and the admin exemption from rate limits follow a demotion.
        try:
            g.principal = auth.request_principal(settings())
        except ApiError as exc:
            # Public routes (login, register, webhook, health) ignore a broken token so a
            # client holding an expired one can still log in; protected routes raise it.
            g.auth_error = exc
        if g.principal is not None:
            context.bind(userId=g.principal.user_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = getattr(g, "request_id", "") or ""
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        duration_ms = round((time.perf_counter() - getattr(g, "started", time.perf_counter())) * 1000, 2)
        principal = getattr(g, "principal", None)
        job = getattr(g, "accepted_job", None)
        access_log.info(
            "%s %s %s", request.method, request.path, response.status_code,
            extra={"method": request.method, "path": request.path, "status": response.status_code,
                   "durationMs": duration_ms, "userId": principal.user_id if principal else None,
                   "jobId": job["_id"] if job else None, "requestId": getattr(g, "request_id", None),
                   # Which of gunicorn's processes answered: per-process state (caches, waits) shows here.
                   "pid": os.getpid()},
        )
        return response

    @app.teardown_request
    def _teardown(_: BaseException | None) -> None:
        token = g.pop("ctx_token", None)
        if token is not None:
            try:
                context.reset(token)
            except ValueError:
                pass
