"""The per-user cap on concurrent waits (``JOB_WAIT_MAX_PER_USER``), across web processes.

A sorted set in Redis per user whose entries expire at their wait's deadline, so a
crashed process leaks nothing (:mod:`api.waits` explains what a wait beyond the cap gets).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

import redis

log = logging.getLogger("purser.waits")

CAP_GRACE_SECONDS = 5.0  # a cap entry outlives its wait's deadline by this much

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""
_scripts: dict[int, Any] = {}


def cap_key(mongodb_db: str, user_id: str) -> str:
    """The sorted set counting ``user_id``'s running waits (one per Purser database)."""
    return f"purser:waits:{mongodb_db}:{user_id}"


REDIS_POOL_SIZE = 16
_redis: redis.Redis | None = None
_redis_key: tuple[int, str] | None = None
_redis_lock = threading.Lock()


def waits_redis(redis_url: str) -> redis.Redis:
    """This process's Redis client for wait slots: a BLOCKING pool of a few connections.

    Hundreds of waits start (or end) at the same instant; with an unbounded pool each
    would open its own connection (a TCP handshake plus redis-py's per-connection
    set-up, which reads package metadata: a third of the web CPU of a burst of
    answers in the profile), so they queue briefly for one of a few instead.
    """
    global _redis, _redis_key
    key = (os.getpid(), redis_url)
    if _redis is None or _redis_key != key:
        with _redis_lock:
            if _redis is None or _redis_key != key:
                pool = redis.BlockingConnectionPool.from_url(
                    key[1], max_connections=REDIS_POOL_SIZE, timeout=2.0, socket_timeout=2.0,
                    socket_connect_timeout=2.0, health_check_interval=30)
                _redis, _redis_key = redis.Redis(connection_pool=pool), key
    return _redis


def acquire_slot(client: redis.Redis, key: str, seconds: float, cap: int) -> tuple[str, str] | None:
    """A wait slot in the cap set ``key`` (:func:`cap_key`): (key, token), or None when ``cap``
    waits are running."""
    if cap <= 0:
        return None
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_ACQUIRE)
    now_ms = int(time.time() * 1000)
    expires_ms = now_ms + int((seconds + CAP_GRACE_SECONDS) * 1000)
    token = uuid.uuid4().hex
    ok = script(keys=[key], args=[now_ms, expires_ms, token, cap, expires_ms - now_ms])
    return (key, token) if ok == 1 else None


def release_slots(redis_url: str, slots: list[tuple[str, str]]) -> None:
    """Give wait slots back, all in one round trip; never raises (entries expire anyway)."""
    try:
        pipe = waits_redis(redis_url).pipeline(transaction=False)
        for key, token in slots:
            pipe.zrem(key, token)
        pipe.execute()
    except Exception:  # noqa: BLE001 - the entries expire after their wait's deadline
        log.debug("could not release wait slots", exc_info=True)
