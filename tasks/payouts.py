"""Payout submission after the hold settled, and the beat tick that resolves payouts in doubt."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from infra.config import get_settings
from infra.mongo import get_db
from infra.redis_client import get_redis
from services import payout_provider, payouts
from tasks.settle import PAYOUT_SUBMIT_TASK, ring
from workers.celery_app import task

log = logging.getLogger("purser.payouts")

LOCK_KEY = "purser:lock:payouts-tick"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
SUBMIT_RETRIES = 8  # backoff 1, 2, 4 ... 60 s; after that the beat tick takes over


def _provider() -> payout_provider.HttpPayoutProvider | None:
    return payout_provider.from_url(get_settings().payout_provider_url)


@task(name=PAYOUT_SUBMIT_TASK, bind=True, acks_late=True, ignore_result=True, max_retries=SUBMIT_RETRIES)
def submit(self, payout_id: str) -> str:  # type: ignore[no-untyped-def]
    """Send one held payout to the provider; a lost answer is retried, never voided."""
    settings = get_settings()
    outcome = payouts.submit_payout(get_db(), payout_id, _provider(), partitions=settings.ledger_partitions, ring=ring)
    if outcome == payouts.LOST and self.request.retries < SUBMIT_RETRIES:
        raise self.retry(countdown=min(2 ** self.request.retries, 60))
    if outcome == payouts.LOST:
        log.warning("payout submission retries exhausted; the payout tick resolves it",
                    extra={"payoutId": payout_id})
    return outcome


@task(name="payouts.tick", acks_late=True, ignore_result=True)
def tick() -> dict:
    """Resolve submitted payouts by status lookup, resubmit or expire pending holds.

    One tick at a time (Redis lock); every job it creates has a deterministic id, so a
    doubled tick applies nothing twice.
    """
    settings = get_settings()
    token = uuid.uuid4().hex
    redis = get_redis()
    if not redis.set(LOCK_KEY, token, nx=True, ex=max(1, settings.payout_tick_seconds * 4)):
        log.info("payout tick skipped: another tick holds the lock")
        return {"skipped": True}
    try:
        result = payouts.tick(get_db(), _provider(), partitions=settings.ledger_partitions, ring=ring,
                              resolve_after=timedelta(seconds=settings.payout_resolve_after_seconds),
                              hold_ttl=timedelta(hours=settings.payout_hold_ttl_hours))
    finally:
        redis.eval(_RELEASE, 1, LOCK_KEY, token)
    log.info("payout tick done", extra=result.as_dict())
    return result.as_dict()
