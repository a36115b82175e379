"""The beat tick that renews and expires subscriptions."""

from __future__ import annotations

import logging
import uuid
from dataclasses import asdict

from infra.config import get_settings
from infra.mongo import get_db
from infra.redis_client import get_redis
from services.subscriptions import tick as run_tick
from tasks.settle import ring
from workers.celery_app import task

log = logging.getLogger("purser.subscriptions")

LOCK_KEY = "purser:lock:subscriptions-tick"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


@task(name="subscriptions.tick", acks_late=True, ignore_result=True)
def tick() -> dict:
    """One tick at a time (Redis lock, TTL below the interval); safe if two run anyway."""
    settings = get_settings()
    token = uuid.uuid4().hex
    ttl = max(1, settings.subscription_tick_seconds - 1)
    redis = get_redis()
    if not redis.set(LOCK_KEY, token, nx=True, ex=ttl):
        log.info("subscription tick skipped: another tick holds the lock")
        return {"skipped": True}
    try:
        result = run_tick(get_db(), chunk=settings.subscription_chunk,
                          partitions=settings.ledger_partitions, ring=ring)
    finally:
        redis.eval(_RELEASE, 1, LOCK_KEY, token)
    log.info("subscription tick done", extra=asdict(result))
    return asdict(result)
