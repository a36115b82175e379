"""Readiness: a worker that settles money, found in O(1), and no leaks to anonymous callers."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import requests

from api.auth import issue_token
from devstack.stores import free_port
from infra import queues
from infra.config import get_settings
from infra.queues import consumes_ledger
from infra.redis_client import get_redis
from services import users


@pytest.fixture
def private_prefix(monkeypatch: pytest.MonkeyPatch) -> str:
    """Heartbeat sets of this test alone: the session worker's own beats stay out."""
    prefix = f"purser:test-heartbeats-{uuid.uuid4().hex[:8]}:"
    monkeypatch.setattr(queues, "HEARTBEAT_KEY_PREFIX", prefix)
    return prefix


def _user(db: Any, stored: str, claimed: str | None = None) -> str:
    """A token of a user stored with role ``stored`` whose token claims ``claimed``."""
    user = users.create_user(db, f"r{uuid.uuid4().hex[:12]}@example.com", "correct-horse-9", role=stored)
    return issue_token(get_settings(), user["_id"], claimed or stored)[0]


def _ready(app_client: Any, token: str | None = None) -> tuple[int, dict[str, Any]]:
    r = app_client.request("GET", "/api/health/ready", token=token)
    return r.status, r.json


def _assert_anonymous_shape(body: dict[str, Any]) -> None:
    assert set(body["checks"]) == {"mongodb", "redis", "worker"}
    for name, check in body["checks"].items():
        assert check == {"ok": check["ok"]} and isinstance(check["ok"], bool), (name, check)


def test_no_heartbeat_is_not_ready(app_client: Any, private_prefix: str, fresh_db: Any) -> None:
    status, body = _ready(app_client)
    assert status == 503
    assert body["code"] == "NOT_READY" and body["detail"] == "failing check(s): worker"
    _assert_anonymous_shape(body)
    assert body["checks"]["worker"]["ok"] is False
    assert body["checks"]["mongodb"]["ok"] and body["checks"]["redis"]["ok"]

    status, body = _ready(app_client, _user(fresh_db, "admin"))
    assert status == 503
    assert body["checks"]["worker"]["ok"] is False
    assert "no live worker consumes the ledger queues" in body["checks"]["worker"]["detail"]
    assert body["checks"]["mongodb"]["ms"] >= 0


def test_housekeeping_alone_is_not_ready(app_client: Any, private_prefix: str, fresh_db: Any) -> None:
    queues.beat(get_redis(), "housekeeping@h", "purser.default")
    status, body = _ready(app_client)
    assert status == 503
    assert "housekeeping@h" not in str(body)
    _assert_anonymous_shape(body)
    status, body = _ready(app_client, _user(fresh_db, "admin"))
    assert status == 503
    assert body["checks"]["worker"]["detail"] == (
        "RuntimeError: no live worker consumes the ledger queues (live: housekeeping@h)")


@pytest.mark.parametrize("consumed", ["ledger.0,ledger.1,purser.default", "ledger.3", "1"])
def test_a_ledger_consumer_is_ready(app_client: Any, private_prefix: str, fresh_db: Any, consumed: str) -> None:
    redis = get_redis()
    queues.beat(redis, "housekeeping@h", "purser.default")
    queues.beat(redis, "worker@h", consumed)
    status, body = _ready(app_client)
    assert status == 200, body
    assert body == {"status": "ready", "checks": {"mongodb": {"ok": True}, "redis": {"ok": True},
                                                  "worker": {"ok": True}}}
    status, body = _ready(app_client, _user(fresh_db, "admin"))
    assert status == 200, body
    assert body["checks"]["worker"]["detail"] == "2 worker(s), 1 settling: worker@h, housekeeping@h"
    assert {"ok", "ms", "detail"} <= set(body["checks"]["mongodb"])


def test_a_stale_heartbeat_is_not_a_live_worker(app_client: Any, private_prefix: str) -> None:
    redis = get_redis()
    seconds, micros = redis.time()
    now = seconds + micros / 1e6
    redis.zadd(queues.heartbeat_key(queues.ROLE_LEDGER), {"gone@h": now - queues.WORKER_HEARTBEAT_TTL - 1})
    assert _ready(app_client)[0] == 503
    queues.beat(redis, "gone@h", "ledger.0")
    assert _ready(app_client)[0] == 200
    queues.forget(redis, "gone@h")
    assert _ready(app_client)[0] == 503


def test_a_node_that_changes_role_leaves_its_old_set(private_prefix: str, stack_env: dict[str, str]) -> None:
    redis = get_redis()
    queues.beat(redis, "n@h", "ledger.0")
    queues.beat(redis, "n@h", "purser.default")
    live = queues.live_workers(redis, names=5)
    assert (live.ledger, live.other, live.other_names) == (0, 1, ["n@h"])


def test_details_follow_the_stored_role_not_the_token(app_client: Any, private_prefix: str,
                                                      fresh_db: Any) -> None:
    """A token that claims admin for a user stored as free gets the anonymous answer."""
    queues.beat(get_redis(), "worker@h", "ledger.0")
    status, body = _ready(app_client, _user(fresh_db, "free", claimed="admin"))
    assert status == 200
    _assert_anonymous_shape(body)
    status, body = _ready(app_client, _user(fresh_db, "admin", claimed="free"))
    assert status == 200 and "worker@h" in body["checks"]["worker"]["detail"]


def test_readiness_never_scans_the_keyspace(app_client: Any, private_prefix: str, fresh_db: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import redis as redis_lib

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("readiness scanned the keyspace")

    for name in ("scan", "scan_iter", "keys"):
        monkeypatch.setattr(redis_lib.Redis, name, refuse)
    queues.beat(get_redis(), "worker@h", "ledger.0")
    assert _ready(app_client)[0] == 200
    assert _ready(app_client, _user(fresh_db, "admin"))[0] == 200


# --- real processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_workers_beat_into_the_set_of_their_role(celery_worker_proc: Any, stack_env: dict[str, str]) -> None:
    """The Procfile's two roles, as real processes: each beats into the set of its role."""
    housekeeping = celery_worker_proc("housekeeping")
    ledger = celery_worker_proc("worker")
    redis = get_redis()
    deadline = time.monotonic() + 20
    members: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        members = {role: {m.decode() for m in redis.zrange(queues.heartbeat_key(role), 0, -1)}
                   for role in (queues.ROLE_LEDGER, queues.ROLE_OTHER)}
        if housekeeping.nodename in members["other"] and ledger.nodename in members["ledger"]:
            break
        time.sleep(0.2)
    assert housekeeping.nodename in members["other"], members
    assert ledger.nodename in members["ledger"], members
    assert housekeeping.nodename not in members["ledger"]
    assert not consumes_ledger("purser.default") and consumes_ledger("ledger.0,ledger.1")
    ledger.stop()
    assert ledger.nodename not in {m.decode() for m in redis.zrange(queues.heartbeat_key("ledger"), 0, -1)}


@pytest.mark.slow
def test_anonymous_readiness_over_http_leaks_no_error_text_or_worker_names(
    web_server: Any, session_worker: Any, fresh_db: Any
) -> None:
    """Gunicorn with a live worker, and one whose Redis is down: anonymous callers get
    names and booleans; an admin (by stored role) gets the details."""
    admin = _user(fresh_db, "admin")
    web = web_server(concurrency=1)
    r = requests.get(web.base_url + "/api/health/ready", timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ready", "checks": {"mongodb": {"ok": True}, "redis": {"ok": True},
                                                      "worker": {"ok": True}}}
    assert session_worker.nodename not in r.text
    r = requests.get(web.base_url + "/api/health/ready", headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    assert r.status_code == 200 and session_worker.nodename in r.text, r.text

    dead_port = free_port()
    down = web_server(concurrency=1, extra_env={"REDIS_URL": f"redis://127.0.0.1:{dead_port}/0"})
    r = requests.get(down.base_url + "/api/health/ready", timeout=30)
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["code"] == "NOT_READY" and body["detail"] == "failing check(s): redis, worker"
    assert body["checks"] == {"mongodb": {"ok": True}, "redis": {"ok": False}, "worker": {"ok": False}}
    for leak in ("Error", "refused", "Connection", str(dead_port), "127.0.0.1", "redis://", "mongodb://"):
        assert leak not in r.text, leak
    r = requests.get(down.base_url + "/api/health/ready", headers={"Authorization": f"Bearer {admin}"}, timeout=30)
    assert r.status_code == 503
    assert "Error" in r.json()["checks"]["redis"]["detail"], r.text
