"""The Celery app, its money-safe settings, queues, routes and beat schedule."""

from __future__ import annotations

import sys
from datetime import timedelta

from celery import Celery
from kombu import Queue

from infra.config import ConfigError, Settings, settings_or_exit
from infra.queues import DEFAULT_QUEUE, partition_queue

TASK_MODULES = ("tasks.settle", "tasks.maintenance", "tasks.subscriptions")
# Registered only outside production (APP_ENV=development or test): debug.boom fails on
# purpose (error-reporting checks), bench.noop measures the queue ceiling (make bench).
TEST_TASK_MODULES = ("tasks.debug", "tasks.bench")


def task_modules(settings: Settings) -> list[str]:
    """The task modules a worker of ``settings`` loads: the test-only ones never in production."""
    return list(TASK_MODULES) + ([] if settings.is_production else list(TEST_TASK_MODULES))


def _check_flower(settings: Settings, argv: list[str]) -> None:
    """Flower in production needs FLOWER_BASIC_AUTH (the Procfile passes it to --basic-auth)."""
    if "flower" in argv[1:] and settings.is_production and not settings.flower_basic_auth:
        error = ConfigError("FLOWER_BASIC_AUTH", "is required in production to run Flower (user:password)")
        print(f"purser: configuration error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def create_celery(settings: Settings) -> Celery:
    app = Celery("purser", broker=settings.redis_url, include=task_modules(settings))
    queues = [Queue(DEFAULT_QUEUE)] + [Queue(partition_queue(p)) for p in range(settings.ledger_partitions)]
    app.conf.update(
        # Money settings: a message is acknowledged only after its work committed, and
        # a worker process that dies mid-batch gives its message back to the queue.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # Longer than any batch (seconds); past it Redis hands an unacked message to
        # another worker, which is harmless (settling is idempotent) but wasteful.
        broker_transport_options={"visibility_timeout": 600, "socket_timeout": 5, "socket_connect_timeout": 5},
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_queues=queues,
        task_default_queue=DEFAULT_QUEUE,
        task_routes={"ledger.settle": {"queue": partition_queue(0)}},
        task_time_limit=300,
        task_soft_time_limit=240,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={
            "sweep": {"task": "ledger.sweep", "schedule": timedelta(seconds=settings.sweep_interval_seconds),
                      "options": {"expires": settings.sweep_interval_seconds * 2}},
            "reconcile": {"task": "ledger.reconcile",
                          "schedule": timedelta(seconds=settings.reconcile_interval_seconds),
                          "options": {"expires": settings.reconcile_interval_seconds}},
            "subscriptions-tick": {"task": "subscriptions.tick",
                                   "schedule": timedelta(seconds=settings.subscription_tick_seconds),
                                   "options": {"expires": settings.subscription_tick_seconds}},
        },
    )
    return app


_settings = settings_or_exit()
_check_flower(_settings, sys.argv)
app = create_celery(_settings)

# Signal handlers (per-process clients, logging, Sentry, metrics) register on import.
from workers import bootstrap  # noqa: E402,F401
