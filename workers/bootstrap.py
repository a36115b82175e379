"""Per-process set-up of worker and beat: logging, store clients after fork, Sentry."""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals

from infra import context
from infra import queues as heartbeats
from infra.config import get_settings
from infra.logging_setup import setup_logging
from infra.mongo import reset_client
from infra.queues import UNKNOWN_QUEUES, WORKER_HEARTBEAT_TTL
from infra.redis_client import reset_redis

log = logging.getLogger("purser.worker")


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    settings = get_settings()
    # Worker and beat send this signal alike; the command line tells them apart.
    service = "beat" if "beat" in sys.argv[1:] else "worker"
    setup_logging(settings.log_level, settings.log_file, process=service,
                  max_bytes=settings.log_file_max_bytes, backups=settings.log_file_backups)


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # PyMongo and redis-py clients must never cross a fork.
    reset_client()
    reset_redis()
    try:
        from infra import observability
        observability.init_worker_process()
    except ImportError:
        pass


@signals.celeryd_init.connect
def _worker_start(sender: Any = None, **_: Any) -> None:
    try:
        from infra import observability
        # First: the metrics directory must be chosen before prometheus_client loads.
        observability.init_worker_main(str(sender) if sender else None)
        observability.init_sentry("worker")
    except ImportError:
        pass


@signals.beat_init.connect
def _beat_start(**_: Any) -> None:
    try:
        from infra import observability
        observability.init_sentry("beat")
    except ImportError:
        pass


@signals.task_prerun.connect
def _bind_task_context(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    request = getattr(task, "request", None)
    headers = getattr(request, "headers", None) or {}
    request_id = headers.get("requestId") if isinstance(headers, dict) else None
    request_id = request_id or getattr(request, "requestId", None)
    token = context.bind(taskId=task_id, task=getattr(task, "name", None), requestId=request_id)
    if request is not None:
        request._purser_ctx_token = token


@signals.task_postrun.connect
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
    from infra.redis_client import get_redis
    while not stop.is_set():
        try:
            heartbeats.beat(get_redis(), name, queues)
        except Exception:  # noqa: BLE001 - Redis may be down; readiness will say so
            log.debug("worker heartbeat failed", exc_info=True)
        stop.wait(WORKER_HEARTBEAT_TTL / 3)


@signals.worker_ready.connect
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
    try:
        from infra import observability
        observability.start_worker_metrics()
    except ImportError:
        pass


@signals.worker_shutdown.connect
def _stop_heartbeat(sender: Any = None, **_: Any) -> None:
    if _heartbeat_stop is not None:
        _heartbeat_stop.set()
    try:
        from infra.redis_client import get_redis
        heartbeats.forget(get_redis(), getattr(sender, "hostname", None) or "worker")
    except Exception:  # noqa: BLE001
        pass
