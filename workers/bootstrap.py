"""Per-process set-up of worker and beat: logging, store clients after fork, Sentry.

:func:`connect` attaches the handlers below to Celery's signals; the entry point
(:func:`workers.celery_app.worker_app`) calls it, importing this module does nothing.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals

from infra import context, observability
from infra import queues as heartbeats
from infra.config import get_settings
from infra.logging_setup import setup_logging
from infra.mongo import reset_client
from infra.queues import UNKNOWN_QUEUES, WORKER_HEARTBEAT_TTL
from infra.redis_client import get_redis, reset_redis
from workers import watchdog

log = logging.getLogger("purser.worker")


def _logging(**_: Any) -> None:
    settings = get_settings()
    # Worker and beat send this signal alike; the command line tells them apart.
    service = "beat" if "beat" in sys.argv[1:] else "worker"
    setup_logging(settings.log_level, settings.log_file, process=service,
                  max_bytes=settings.log_file_max_bytes, backups=settings.log_file_backups)


def _after_fork(**_: Any) -> None:
    # PyMongo and redis-py clients must never cross a fork.
    reset_client()
    reset_redis()
    observability.init_worker_process()


def _worker_start(sender: Any = None, **_: Any) -> None:
    # First: the metrics directory must be chosen before prometheus_client loads.
    observability.init_worker_main(str(sender) if sender else None)
    observability.init_sentry("worker")


def _beat_start(**_: Any) -> None:
    observability.init_sentry("beat")


def _bind_task_context(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    headers = getattr(request, "headers", None) or {}
    request_id = headers.get("requestId") if isinstance(headers, dict) else None
    request_id = request_id or getattr(request, "requestId", None)
    token = context.bind(taskId=task_id, task=getattr(task, "name", None), requestId=request_id)
    if request is not None:
        request._purser_ctx_token = token


def _unbind_task_context(task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    token = getattr(request, "_purser_ctx_token", None)
    if token is not None:
        try:
            context.reset(token)
        except ValueError:
            pass


_heartbeat_stop = None


def _heartbeat_loop(name: str, queues: str, stop: Any) -> None:
    while not stop.is_set():
        try:
            heartbeats.beat(get_redis(), name, queues)
        except Exception:  # noqa: BLE001 - Redis may be down; readiness will say so
            log.debug("worker heartbeat failed", exc_info=True)
        stop.wait(WORKER_HEARTBEAT_TTL / 3)


def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Readiness sees a worker through its heartbeat, without a broadcast round trip.

    The node beats into the sorted set of its role, chosen from the queues it
    consumes, so readiness can tell a ledger worker from the housekeeping one
    (which alone would leave money unsettled) with one ZCOUNT (infra/queues.py).
    """
    import threading
    global _heartbeat_stop
    name = getattr(sender, "hostname", None) or "worker"
    try:
        queues = ",".join(sorted(sender.app.amqp.queues.consume_from)) or UNKNOWN_QUEUES[0]
    except AttributeError:
        queues = UNKNOWN_QUEUES[0]
    _heartbeat_stop = threading.Event()
    threading.Thread(target=_heartbeat_loop, args=(name, queues, _heartbeat_stop), daemon=True,
                     name="purser-heartbeat").start()
    # The heartbeat proves the process lives, not that it consumes: the watchdog does that.
    watchdog.start(sender, _heartbeat_stop)
    observability.start_worker_metrics()


def _stop_heartbeat(sender: Any = None, **_: Any) -> None:
    if _heartbeat_stop is not None:
        _heartbeat_stop.set()
    try:
        heartbeats.forget(get_redis(), getattr(sender, "hostname", None) or "worker")
    except Exception:  # noqa: BLE001
        pass


def connect() -> None:
    """Attach the handlers to Celery's signals (idempotent: Celery keeps one per receiver)."""
    signals.setup_logging.connect(_logging, weak=False)
    signals.worker_process_init.connect(_after_fork, weak=False)
    signals.celeryd_init.connect(_worker_start, weak=False)
    signals.beat_init.connect(_beat_start, weak=False)
    signals.task_prerun.connect(_bind_task_context, weak=False)
    signals.task_postrun.connect(_unbind_task_context, weak=False)
    signals.worker_ready.connect(_start_heartbeat, weak=False)
    signals.worker_shutdown.connect(_stop_heartbeat, weak=False)
