"""Per-process set-up of worker and beat: logging, store clients after fork, Sentry."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from infra import context
from infra.config import get_settings
from infra.logging_setup import setup_logging
from infra.mongo import reset_client
from infra.redis_client import reset_redis

log = logging.getLogger("purser.worker")


@signals.setup_logging.connect
def _logging(**_: Any) -> None:
    settings = get_settings()
    setup_logging(settings.log_level, settings.log_file, process="worker")


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
def _worker_start(**_: Any) -> None:
    try:
        from infra import observability
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
