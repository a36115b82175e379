"""The Celery app factory: money-safe settings, queues, routes and beat schedule.

Nothing is built at import. :func:`create_celery` makes an app from
:class:`~infra.config.Settings` (the model is Flask's ``examples/celery`` and its
``celery_init_app``); :func:`get_celery` is the process's one app, built from
:func:`~infra.config.get_settings` on first use; :func:`worker_app` is the entry
point of ``celery -A workers`` (``workers.app`` resolves to it lazily). Task modules
register through :func:`task`, so they import without an app and ring through
whichever process app exists when they are called.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import Celery, shared_task
from celery.local import Proxy
from kombu import Queue

from infra.config import ConfigError, Settings, get_settings, settings_or_exit
from infra.queues import DEFAULT_QUEUE, WEBHOOK_QUEUE, partition_queue

TASK_MODULES = ("tasks.settle", "tasks.maintenance", "tasks.subscriptions", "tasks.payouts", "tasks.webhooks",
                "tasks.history")
# Registered only outside production (APP_ENV=development or test): debug.boom fails on
# purpose (error-reporting checks), bench.noop measures the queue ceiling (make bench).
TEST_TASK_MODULES = ("tasks.debug", "tasks.bench")


def task_modules(settings: Settings) -> list[str]:
    """The task modules a worker of ``settings`` loads: the test-only ones never in production."""
    return list(TASK_MODULES) + ([] if settings.is_production else list(TEST_TASK_MODULES))


def check_flower(settings: Settings, argv: list[str]) -> None:
    """Flower in production needs FLOWER_BASIC_AUTH (the Procfile passes it to --basic-auth)."""
    if "flower" in argv[1:] and settings.is_production and not settings.flower_basic_auth:
        error = ConfigError("FLOWER_BASIC_AUTH", "is required in production to run Flower (user:password)")
        print(f"purser: configuration error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2)


def create_celery(settings: Settings) -> Celery:
    """A Celery app configured from ``settings``; opens no connection (the broker is lazy)."""
    app = Celery("purser", broker=settings.redis_url, include=task_modules(settings), set_as_current=False)
    queues = ([Queue(DEFAULT_QUEUE), Queue(WEBHOOK_QUEUE)]
              + [Queue(partition_queue(p)) for p in range(settings.ledger_partitions)])
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
        task_routes={"ledger.settle": {"queue": partition_queue(0)}, "webhooks.deliver": {"queue": WEBHOOK_QUEUE}},
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
            "idempotency-expiry": {"task": "idempotency.expire",
                                   "schedule": timedelta(seconds=settings.idempotency_expiry_seconds),
                                   "options": {"expires": settings.idempotency_expiry_seconds}},
            "subscriptions-tick": {"task": "subscriptions.tick",
                                   "schedule": timedelta(seconds=settings.subscription_tick_seconds),
                                   "options": {"expires": settings.subscription_tick_seconds}},
            "payouts-tick": {"task": "payouts.tick", "schedule": timedelta(seconds=settings.payout_tick_seconds),
                             "options": {"expires": settings.payout_tick_seconds}},
            "webhooks-tick": {"task": "webhooks.tick", "schedule": timedelta(seconds=settings.webhook_tick_seconds),
                              "options": {"expires": settings.webhook_tick_seconds * 2}},
            "balances-rollup": {"task": "history.rollup",
                                "schedule": timedelta(seconds=settings.rollup_interval_seconds),
                                "options": {"expires": settings.rollup_interval_seconds}},
            "statements-close": {"task": "history.close_statements",
                                 "schedule": timedelta(seconds=settings.statement_tick_seconds),
                                 "options": {"expires": settings.statement_tick_seconds}},
            "payout-schedules": {"task": "history.scheduled_payouts",
                                 "schedule": timedelta(seconds=settings.payout_schedule_tick_seconds),
                                 "options": {"expires": settings.payout_schedule_tick_seconds}},
        },
    )
    return app


_app: Celery | None = None
_app_lock = threading.Lock()


def get_celery() -> Celery:
    """The process's Celery app, built from the process settings on first use.

    The web tier and the CLI publish doorbells through it; the worker, beat and
    Flower get the same app through :func:`worker_app`.
    """
    global _app
    with _app_lock:
        if _app is None:
            app = create_celery(get_settings())
            app.set_default()
            _app = app
        return _app


def worker_app() -> Celery:
    """Entry point of ``celery -A workers worker|beat|flower``: configuration, app, signals.

    A configuration error is one line on stderr and exit status 2.
    """
    settings = settings_or_exit()
    check_flower(settings, sys.argv)
    app = get_celery()
    # Per-process set-up (logging, store clients after fork, Sentry, metrics, heartbeats).
    from workers import bootstrap

    bootstrap.connect()
    return app


def task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Declare a task with Celery's ``shared_task``, resolved against the process app.

    ``shared_task`` registers the function with every app when it is finalized; its own
    proxy would look the task up in Celery's *current* app. The proxy returned here looks
    it up in :func:`get_celery`'s app, built on first use, so ``settle.apply_async(...)``
    works in any process (web, CLI, tests) without a Celery app having been created
    before, and always through the app the process configured.
    """
    name = options["name"]

    def register(fun: Callable[..., Any]) -> Any:
        shared_task(**options)(fun)
        return Proxy(lambda: get_celery().tasks[name])

    return register


def __getattr__(name: str) -> Any:
    # ``from workers.celery_app import app``: the process app, built on first access.
    if name == "app":
        return get_celery()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
