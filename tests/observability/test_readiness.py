"""Readiness needs a worker that settles money, not just any live Celery node."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from api.routes import health
from infra.queues import consumes_ledger
from infra.redis_client import get_redis


@pytest.fixture
def private_prefix(monkeypatch: pytest.MonkeyPatch) -> str:
    """A heartbeat namespace of this test alone: the session worker's own beats stay out."""
    prefix = f"purser:test-worker-{uuid.uuid4().hex[:8]}:"
    monkeypatch.setattr(health, "WORKER_HEARTBEAT_PREFIX", prefix)
    return prefix


def _ready(app_client: Any) -> tuple[int, dict[str, Any]]:
    r = app_client.request("GET", "/api/health/ready")
    return r.status, r.json


def test_no_heartbeat_is_not_ready(app_client: Any, private_prefix: str) -> None:
    status, body = _ready(app_client)
    assert status == 503
    assert body["code"] == "NOT_READY"
    assert body["checks"]["worker"]["ok"] is False
    assert body["checks"]["mongodb"]["ok"] and body["checks"]["redis"]["ok"]


def test_housekeeping_alone_is_not_ready(app_client: Any, private_prefix: str) -> None:
    get_redis().set(private_prefix + "housekeeping@h", "purser.default", ex=15)
    status, body = _ready(app_client)
    assert status == 503
    assert "no live worker consumes the ledger queues" in body["checks"]["worker"]["detail"]


@pytest.mark.parametrize("queues", ["ledger.0,ledger.1,purser.default", "ledger.3", "1"])
def test_a_ledger_consumer_is_ready(app_client: Any, private_prefix: str, queues: str) -> None:
    redis = get_redis()
    redis.set(private_prefix + "housekeeping@h", "purser.default", ex=15)
    redis.set(private_prefix + "worker@h", queues, ex=15)
    status, body = _ready(app_client)
    assert status == 200, body
    assert body["checks"]["worker"]["detail"].startswith("2 worker(s), 1 settling")


@pytest.mark.slow
def test_real_workers_beat_the_queues_they_consume(celery_worker_proc: Any, stack_env: dict[str, str]) -> None:
    """The Procfile's two roles, as real processes: each heartbeat names its queues."""
    housekeeping = celery_worker_proc(queues=["purser.default"])
    ledger = celery_worker_proc(queues=["ledger.0", "ledger.1"])
    redis = get_redis()
    deadline = time.monotonic() + 20
    beats: dict[str, str] = {}
    while time.monotonic() < deadline:
        beats = {name: (redis.get(f"purser:worker:{name}") or b"").decode()
                 for name in (housekeeping.nodename, ledger.nodename)}
        if all(beats.values()):
            break
        time.sleep(0.2)
    assert beats[housekeeping.nodename] == "purser.default"
    assert beats[ledger.nodename] == "ledger.0,ledger.1"
    assert not consumes_ledger(beats[housekeeping.nodename])
    assert consumes_ledger(beats[ledger.nodename])
