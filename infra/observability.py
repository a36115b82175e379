"""Sentry and Prometheus wiring for web, worker and beat processes.

Entry points (called by ``api/__init__.py`` and ``workers/bootstrap.py``):

- :func:`init_web` (each gunicorn worker, from the app factory): Sentry, ``/metrics``,
  per-request metrics.
- :func:`init_worker_main` (Celery worker main process, ``celeryd_init``, before the
  pool forks): the Prometheus multi-process directory and task-failure counting.
- :func:`start_worker_metrics` / :func:`stop_worker_metrics` (``worker_ready`` /
  ``worker_shutdown``): the worker's metrics port, served by the main process from
  the files every pool child writes.
- :func:`init_worker_process` (each pool child, ``worker_process_init``).
- :func:`init_sentry` (web, worker and beat).
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from infra import context, metrics
from infra.config import Settings, get_settings
from infra.logging_setup import mask_value

log = logging.getLogger("purser.observability")

# Context fields copied onto every Sentry event as tags (searchable in Sentry).
_TAG_FIELDS = ("requestId", "jobId", "taskId", "partition")

_sentry_process: str | None = None
_metrics_server: Any = None


# --- Sentry ---------------------------------------------------------------------------


def _mask_event(event: dict[str, Any]) -> dict[str, Any]:
    meta = event.pop("_meta", None)  # Sentry's annotations mirror the event's paths
    masked = mask_value(event, max_depth=32)
    if meta is not None:
        masked["_meta"] = meta
    return masked


def before_send(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Mask secrets everywhere in the event and tag it with the request/task context.

    Runs in the thread that captured the event, so the log context of the request or
    task being handled is the current one.
    """
    try:
        event = _mask_event(event)
        tags = event.get("tags")
        if not isinstance(tags, dict):
            tags = {}
        current = context.current()
        for name in _TAG_FIELDS:
            value = current.get(name)
            if value is not None and name not in tags:
                tags[name] = str(value)
        event["tags"] = tags
        user_id = current.get("userId")
        if user_id and not event.get("user"):
            event["user"] = {"id": str(user_id)}
        return event
    except Exception:  # noqa: BLE001 - never send an event we could not mask
        return None


def before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any] | None:
    try:
        return mask_value(crumb, max_depth=16)
    except Exception:  # noqa: BLE001
        return None


def init_sentry(process: str, settings: Settings | None = None) -> bool:
    """Initialise sentry-sdk once per process when ``SENTRY_DSN`` is set; True if enabled."""
    global _sentry_process
    settings = settings or get_settings()
    if not settings.sentry_dsn:
        return False
    if _sentry_process is not None:
        return True
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.flask import FlaskIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.app_env,
        release=settings.release,
        integrations=[
            FlaskIntegration(),
            CeleryIntegration(),
            # INFO and above become breadcrumbs, ERROR and above events.
            LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
        ],
        send_default_pii=False,
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
    )
    # On the global scope: a gevent request greenlet starts with an empty context and
    # would not see a tag set on this (main greenlet's) isolation scope.
    sentry_sdk.get_global_scope().set_tag("process", process)
    _sentry_process = process
    log.info("sentry enabled", extra={"environment": settings.app_env, "release": settings.release})
    return True


# --- web --------------------------------------------------------------------------------


def init_web(app: Any, settings: Settings) -> None:
    """Sentry, the ``/metrics`` route and per-request metrics for the Flask app."""
    from flask import Response, g, request

    metrics.use_multiprocess_values()  # gunicorn.conf.py chose the directory in the master
    init_sentry("web", settings)

    def metrics_view() -> Response:
        body, content_type = metrics.render()
        return Response(body, mimetype=None, content_type=content_type)

    # Not declared with api.spec.endpoint(): operational, not part of the API
    # contract, so it is absent from the OpenAPI document and never rate-limited.
    app.add_url_rule("/metrics", endpoint="metrics", view_func=metrics_view, methods=["GET"])

    @app.after_request
    def _observe(response: Response) -> Response:
        try:
            rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
            started = getattr(g, "started", None)
            seconds = time.perf_counter() - started if started is not None else 0.0
            metrics.observe_request(rule, request.method, response.status_code, seconds)
            job = getattr(g, "accepted_job", None)
            if job is not None and response.status_code == 202:
                metrics.record_accepted(job)
        except Exception:  # noqa: BLE001 - metrics never break an answer
            log.debug("could not record request metrics", exc_info=True)
        return response


# --- worker -----------------------------------------------------------------------------


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)[:80] or "worker"


def prepare_multiproc_dir(path: str | Path) -> Path:
    """Create ``path`` and delete the value files a previous run left there."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    return directory


def init_worker_main(nodename: str | None = None, settings: Settings | None = None) -> None:
    """Worker main process, before the pool forks: choose and empty the metrics directory.

    ``PROMETHEUS_MULTIPROC_DIR`` wins when set; otherwise one directory per node name
    under ``var/prometheus``. It must be set before ``prometheus_client`` is imported,
    which is why this runs first in ``celeryd_init``.
    """
    settings = settings or get_settings()
    directory = settings.prometheus_multiproc_dir
    if not directory:
        directory = str(settings.var_dir / "prometheus" / f"worker-{_safe_name(nodename or 'worker')}")
    # prometheus_client reads the variable itself (at import and in every pool child).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    prepare_multiproc_dir(directory)

    from celery import signals

    if not metrics.use_multiprocess_values():
        log.warning("prometheus_client was set up before the multi-process directory; worker metrics "
                    "will only show the main process")
    signals.task_failure.connect(_count_task_failure, weak=False)
    signals.worker_shutdown.connect(_on_worker_shutdown, weak=False)


def _count_task_failure(sender: Any = None, **_: Any) -> None:
    try:
        metrics.TASK_FAILURES.labels(getattr(sender, "name", None) or "unknown").inc()
    except Exception:  # noqa: BLE001
        log.debug("could not count a task failure", exc_info=True)


def _on_worker_shutdown(**_: Any) -> None:
    stop_worker_metrics()


def start_worker_metrics(settings: Settings | None = None) -> int | None:
    """Serve the merged metrics of all pool processes on ``WORKER_METRICS_PORT`` (0 = off).

    Returns the bound port, or None when disabled or the port is taken (logged; a
    worker without its metrics port still settles money).
    """
    global _metrics_server
    settings = settings or get_settings()
    if settings.metrics_port == 0 or _metrics_server is not None:
        return None
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(settings.metrics_port, addr=settings.metrics_address,
                                            registry=metrics.registry())
    except OSError as exc:
        log.warning("worker metrics port unavailable; metrics not served",
                    extra={"port": settings.metrics_port, "error": str(exc)})
        return None
    _metrics_server = server
    log.info("worker metrics served", extra={"address": settings.metrics_address, "port": settings.metrics_port,
                                              "multiprocDir": os.environ.get("PROMETHEUS_MULTIPROC_DIR")})
    return settings.metrics_port


def stop_worker_metrics() -> None:
    global _metrics_server
    server, _metrics_server = _metrics_server, None
    if server is not None:
        try:
            server.shutdown()
            server.server_close()
        except Exception:  # noqa: BLE001
            pass


def init_worker_process() -> None:
    """A pool child after fork: per-process log file if asked, metrics files are per pid."""
    settings = get_settings()
    if settings.log_file and "{pid}" in settings.log_file:
        from infra.logging_setup import setup_logging
        setup_logging(settings.log_level, settings.log_file, process="worker", force=True,
                      max_bytes=settings.log_file_max_bytes, backups=settings.log_file_backups)
