"""Job webhooks on Celery: dispatch after a committed batch, one task per delivery, beat's tick.

The dispatcher and the tick run on the housekeeping queue (``purser.default``);
deliveries on their own (``purser.webhooks``, the Procfile's ``webhooks`` role, a
thread pool): a slow receiver must hold neither a settler nor beat's housekeeping. Every message is a hint; the state
lives in MongoDB (``services/webhook_dispatch.py``, ``services/webhook_delivery.py``), so a lost message, a doubled
one or a worker SIGKILLed mid-delivery changes nothing but latency: beat's tick dispatches
every partition and hands out every due delivery again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from infra import metrics
from infra.config import get_settings
from infra.mongo import get_db
from infra.redis_client import get_redis
from services.webhook_delivery import deliver_one, due_deliveries
from services.webhook_dispatch import Dispatch, dispatch_partition, dispatch_statements
from services.webhook_endpoints import any_active_endpoint
from workers.celery_app import task

log = logging.getLogger("purser.webhooks")

RING_FLAG_TTL = 30
# A retry due later than this is left to beat's due sweep: a Celery ETA message held
# longer than the broker's visibility timeout would be handed out twice.
COUNTDOWN_MAX = 60.0
MAX_PAGES = 20  # dispatcher pages per task run; the rest is the next run's


def _ring_flag(partition: int) -> str:
    # Under purser:ring:* so the test fixtures that forget ring flags forget these too.
    return f"purser:ring:webhooks:{partition}"


def notify(batch: Any) -> None:
    """After a committed settlement batch: have its partition's new events dispatched.

    Never raises and costs nothing but a cached check when no endpoint is active; a
    failed publish is picked up by beat's tick.
    """
    try:
        partitions = sorted({job.get("partition") for job, _ in batch.outcomes
                             if isinstance(job.get("partition"), int)})
        if not partitions or not any_active_endpoint(get_db()):
            return
        redis = get_redis()
        for partition in partitions:
            if redis.set(_ring_flag(partition), 1, nx=True, ex=RING_FLAG_TTL):
                dispatch.apply_async(args=[partition])
    except Exception:  # noqa: BLE001 - settlement committed; the webhook tick dispatches later
        log.warning("could not enqueue the webhook dispatcher", exc_info=True)


def enqueue(delivery_id: str, countdown: float | None = None) -> None:
    try:
        deliver.apply_async(args=[delivery_id], countdown=countdown)
    except Exception:  # noqa: BLE001 - the due sweep hands it out again
        log.warning("could not enqueue a webhook delivery", extra={"deliveryId": delivery_id}, exc_info=True)


def _dispatch_pages(page: Callable[[], Dispatch]) -> int:
    """Run ``page`` until its chain's cursor reaches the head (at most MAX_PAGES); the
    deliveries it made, each enqueued."""
    created = 0
    for _ in range(MAX_PAGES):
        result = page()
        for delivery_id in result.deliveries:
            enqueue(delivery_id)
        created += len(result.deliveries)
        if not result.more:
            break
    return created


def dispatch_all_pages(partition: int) -> int:
    """Dispatch ``partition`` until its cursor reaches the chain head (bounded); deliveries enqueued."""
    db = get_db()
    return _dispatch_pages(lambda: dispatch_partition(db, partition))


def dispatch_statement_pages() -> int:
    """Dispatch the statements' chain (``statement.ready``) to its head (bounded); deliveries enqueued."""
    db = get_db()
    return _dispatch_pages(lambda: dispatch_statements(db))


def notify_statements() -> None:
    """After statements were stored: have their events dispatched now rather than at the next tick."""
    try:
        if any_active_endpoint(get_db()):
            dispatch_statements_task.apply_async()
    except Exception:  # noqa: BLE001 - the statements are stored; the webhook tick dispatches later
        log.warning("could not enqueue the statement event dispatcher", exc_info=True)


@task(name="webhooks.dispatch_statements", acks_late=True, ignore_result=True)
def dispatch_statements_task() -> int:
    return dispatch_statement_pages()


@task(name="webhooks.dispatch", acks_late=True, ignore_result=True)
def dispatch(partition: int) -> int:
    if not isinstance(partition, int) or not 0 <= partition < get_settings().ledger_partitions:
        log.error("webhook dispatch called with an invalid partition", extra={"partition": partition})
        return 0
    try:
        get_redis().delete(_ring_flag(partition))  # before reading: a later batch rings again
    except Exception:  # noqa: BLE001 - the flag is an optimisation only
        log.warning("could not clear the webhook ring flag", exc_info=True)
    return dispatch_all_pages(partition)


@task(name="webhooks.deliver", acks_late=True, ignore_result=True)
def deliver(delivery_id: str) -> str | None:
    settings = get_settings()
    outcome = deliver_one(get_db(), delivery_id, timeout=settings.webhook_timeout_seconds,
                          schedule=settings.webhook_backoff_seconds,
                          allow_private=settings.webhook_allow_private)
    if outcome.retry_in is not None and outcome.retry_in <= COUNTDOWN_MAX:
        enqueue(delivery_id, countdown=outcome.retry_in)
    if outcome.claimed and outcome.status is not None:

        metrics.WEBHOOK_ATTEMPTS.labels(str(outcome.status)).inc()
    return None if outcome.status is None else str(outcome.status)


@task(name="webhooks.tick", acks_late=True, ignore_result=True)
def tick() -> dict[str, int]:
    """Beat: dispatch every partition and the statements' chain, then hand out every due delivery.

    Idempotent when doubled."""
    created = sum(dispatch_all_pages(p) for p in range(get_settings().ledger_partitions))
    created += dispatch_statement_pages()
    due = due_deliveries(get_db())
    for delivery_id in due:
        enqueue(delivery_id)
    if created or due:
        log.info("webhook tick", extra={"deliveriesCreated": created, "due": len(due)})
    return {"created": created, "due": len(due)}
