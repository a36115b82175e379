"""Beat's money-over-time chores: fold checkpoints, close last month's statements, scheduled payouts.

Each takes a Redis lock so one tick runs at a time, and each is safe when two run
anyway (celery #2856): the fold's window commits under a guard on the watermark,
statements and payout slots have ids derived from what they are.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from infra.config import get_settings
from infra.mongo import get_db
from infra.redis_client import get_redis
from ledger.periods import month_of
from ledger.timeutil import utcnow
from services import checkpoints, payout_schedules, statements
from tasks.settle import ring
from tasks.webhooks import notify_statements
from workers.celery_app import task

log = logging.getLogger("purser.history")

_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def _locked(name: str, ttl: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    key, token, redis = f"purser:lock:{name}", uuid.uuid4().hex, get_redis()
    if not redis.set(key, token, nx=True, ex=max(1, ttl)):
        log.info("tick skipped: another holds the lock", extra={"tick": name})
        return {"skipped": True}
    try:
        return run()
    finally:
        redis.eval(_RELEASE, 1, key, token)


@task(name="history.rollup", acks_late=True, ignore_result=True)
def rollup() -> dict:
    settings = get_settings()
    return _locked("rollup", settings.rollup_interval_seconds * 4, lambda: checkpoints.roll_up(
        get_db(), partitions=settings.ledger_partitions, now=utcnow(),
        margin=timedelta(seconds=settings.history_margin_seconds)).as_dict())


@task(name="history.close_statements", acks_late=True, ignore_result=True)
def close_statements() -> dict:
    """Store last month's statement of every creator once the month is closed."""
    settings = get_settings()
    now = utcnow()
    month = month_of(now).previous()
    done = _locked("statements", settings.statement_tick_seconds, lambda: statements.close_month(
        get_db(), month, now, settle_margin=timedelta(seconds=settings.history_margin_seconds)))
    if done.get("stored"):
        notify_statements()  # statement.ready: the chain entries are the outbox
    return done


@task(name="history.scheduled_payouts", acks_late=True, ignore_result=True)
def scheduled_payouts() -> dict:
    settings = get_settings()
    return _locked("payout-schedules", settings.payout_schedule_tick_seconds, lambda: payout_schedules.tick(
        get_db(), floor=settings.payout_min_amount, partitions=settings.ledger_partitions, ring=ring).as_dict())
