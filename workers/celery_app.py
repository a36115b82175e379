"""The Celery app, its money-safe settings, queues, routes and beat schedule."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery
from kombu import Queue

from infra.config import Settings, settings_or_exit
from infra.queues import DEFAULT_QUEUE, partition_queue


def create_celery(settings: Settings) -> Celery:
    include = ["tasks.settle", "tasks.maintenance", "tasks.subscriptions", "tasks.bench"]
    if not settings.is_production:
        include.append("tasks.debug")  # debug.boom: fails on purpose, for error-reporting checks
    app = Celery("purser", broker=settings.redis_url, include=include)
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


app = create_celery(settings_or_exit())

# Signal handlers (per-process clients, logging, Sentry, metrics) register on import.
from workers import bootstrap  # noqa: E402,F401
