"""One Redis client per process for locks, readiness and rate-limit checks."""

from __future__ import annotations

import os

import redis

from infra.config import get_settings

_client: redis.Redis | None = None
_pid: int | None = None


def get_redis() -> redis.Redis:
    global _client, _pid
    if _client is None or _pid != os.getpid():
        _client = redis.Redis.from_url(
            get_settings().redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )
        _pid = os.getpid()
    return _client


def reset_redis() -> None:
    global _client, _pid
    _client = None
    _pid = None
