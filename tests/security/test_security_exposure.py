"""What an outsider can reach: rate limits that a spoofed address cannot reset,
Flower behind basic auth, and metrics/health/docs pages free of secrets."""

from __future__ import annotations

import base64
import importlib.util
import os
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.stores import ManagedProcess, RedisServer, free_port, stop_all
from tests.support.client import ApiClient
from tests.support.env import ROOT, TEST_JWT_SECRET, TEST_WEBHOOK_SECRET, child_env
from tests.support.seeding import PASSWORD, password_hash, seed_users
from tests.support.stack import RoleWorker

pytestmark = pytest.mark.slow

LIMITS_LANDED = importlib.util.find_spec("api.limits") is not None
needs_limits = pytest.mark.xfail(not LIMITS_LANDED, reason="rate limiting (issue 6) not landed", strict=True)

FLOWER_AUTH = "ops:" + uuid.uuid4().hex

SPOOFING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded", "True-Client-IP", "CF-Connecting-IP")


def _spoof(n: int) -> dict[str, str]:
    ip = f"203.0.{n // 250}.{n % 250 + 1}"
    return {"X-Forwarded-For": ip, "X-Real-IP": ip, "Forwarded": f"for={ip}", "True-Client-IP": ip,
            "CF-Connecting-IP": ip}


@pytest.fixture(scope="module")
def limited(start_web: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiClient, Any]]:
    """Gunicorn with rate limits on, no trusted proxy, its own Redis (the limiter's store).

    The per-address bound on failed logins is tightened to 5/minute (default 100 in 15
    minutes) so a few requests show whether spoofed headers reset it.
    """
    from infra.mongo import get_db

    redis = RedisServer(tmp_path_factory.mktemp("limit-redis") / "data").start()
    web = None
    try:
        web = start_web(tmp_path_factory.mktemp("limited"),
                        {"REDIS_URL": redis.url, "RATE_LIMIT_ENABLED": "true", "TRUSTED_PROXIES": "0",
                         "RATE_LIMITS_LOGIN_ADDRESS": "5/minute"})
        yield ApiClient(web.base_url), get_db()
    finally:
        stop_all([p for p in (web, redis) if p is not None])


@needs_limits
def test_rotating_forwarded_headers_does_not_reset_the_login_limit(limited):
    """Failed logins are limited per client address (here 5/minute). With no trusted proxy,
    an attacker rotating X-Forwarded-For & co. (and the email, to dodge the per-email
    limit) is still one address."""
    http, _ = limited
    statuses = []
    for n in range(8):
        r = http.request("POST", "/api/auth/login", json_body={"email": f"guess{n}@example.com", "password": "nope"},
                         headers=_spoof(n))
        statuses.append(r.status)
        if r.status == 429:
            assert r.headers["Content-Type"].startswith("application/problem+json")
            assert r.json["code"] == "RATE_LIMITED" and int(r.headers["Retry-After"]) >= 1
            break
    assert 429 in statuses, f"8 spoofed logins were never limited: {statuses}"
    assert statuses.index(429) <= 5, statuses


@needs_limits
def test_rotating_forwarded_headers_does_not_reset_the_tier_limit(limited):
    """A free user (10/minute) keeps one budget whatever address it claims."""
    http, db = limited
    user = seed_users(db, 1, "free", "limited")[0]
    statuses = []
    for n in range(13):
        r = http.request("GET", "/api/wallet/balance", token=user.token, headers=_spoof(n))
        statuses.append(r.status)
        assert "X-RateLimit-Limit" in r.headers, r.headers
    assert statuses[:10] == [200] * 10, statuses
    assert set(statuses[10:]) == {429}, statuses


@needs_limits
def test_rotating_forwarded_headers_does_not_reset_the_per_email_login_limit(limited):
    """The same email from 'different' addresses: the per-email budget of failures still
    runs out (5 in 15 minutes), and the real password stops working for the window."""
    http, db = limited
    user = seed_users(db, 1, "free", "target")[0]
    statuses = [http.request("POST", "/api/auth/login", json_body={"email": user.email, "password": "wrong"},
                             headers=_spoof(100 + n)).status for n in range(7)]
    assert 429 in statuses, statuses


# ------------------------------------------------------------------------------- Flower


class FlowerProcess(ManagedProcess):
    ready_timeout = 60.0

    def __init__(self, env: dict[str, str], log_path: Any, port: int) -> None:
        self.port = port
        # The Procfile's command line, verbatim.
        super().__init__(["/bin/sh", "-c", f"exec {sys.executable} -m celery -A workers flower --address=127.0.0.1 "
                          f'--port={port} --basic-auth="$FLOWER_BASIC_AUTH"'], log_path=log_path, env=env, cwd=ROOT,
                         name="flower")

    def probe(self) -> bool:
        return _status(f"http://127.0.0.1:{self.port}/healthcheck") == 200


def _status(url: str, auth: str | None = None) -> int | None:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def _get(url: str, auth: str | None = None) -> str:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode(errors="replace")


@pytest.fixture(scope="module")
def exposed(stack_env: dict[str, str], start_web: Any,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Web, a worker with its metrics port and two Flowers (with and without credentials),
    all on a private Redis; a few jobs so the metrics have something to say."""
    from infra.mongo import get_db

    logs = tmp_path_factory.mktemp("exposure")
    redis = RedisServer(logs / "redis").start()
    procs: list[ManagedProcess] = [redis]
    try:
        metrics_port = free_port()
        base = {"REDIS_URL": redis.url, "RATE_LIMIT_ENABLED": "false", "WORKER_METRICS_PORT": str(metrics_port)}
        web = start_web(logs, base)
        procs.append(web)
        worker = RoleWorker("worker", child_env(stack_env, base), logs / "worker.log")
        procs.append(worker)
        worker.start(timeout=90)
        flowers = {}
        for name, auth in (("with_auth", FLOWER_AUTH), ("without_auth", "")):
            port = free_port()
            flower = FlowerProcess(child_env(stack_env, {**base, "FLOWER_BASIC_AUTH": auth}),
                                   logs / f"flower-{name}.log", port)
            procs.append(flower)
            flower.start()
            flowers[name] = f"http://127.0.0.1:{port}"
        http = ApiClient(web.base_url)
        db = get_db()
        fan, other = seed_users(db, 2, "free", "exposed")
        assert http.webhook(fan.id, 100).status == 202
        assert http.money("/api/wallet/transfer", fan, {"receiverId": other.id, "amount": 1}).status == 202
        yield {"http": http, "web": web.base_url, "worker_metrics": f"http://127.0.0.1:{metrics_port}/metrics",
               "flowers": flowers, "tokens": [fan.token, other.token], "emails": [fan.email, other.email]}
    finally:
        stop_all(procs)


@pytest.mark.parametrize("path", ["/", "/workers", "/tasks", "/api/workers", "/api/tasks", "/broker"])
def test_flower_requires_basic_auth(exposed, path):
    base = exposed["flowers"]["with_auth"]
    assert _status(base + path) == 401
    assert _status(base + path, "ops:wrong-password") == 401
    assert _status(base + path, FLOWER_AUTH + "x") == 401
    assert _status(base + path, FLOWER_AUTH) in (200, 404), "the right credentials must get in"


@pytest.mark.parametrize("path", ["/", "/api/workers", "/api/tasks"])
def test_flower_without_configured_credentials_stays_closed(exposed, path):
    """The Procfile passes --basic-auth="$FLOWER_BASIC_AUTH": an empty value must not open Flower."""
    base = exposed["flowers"]["without_auth"]
    assert _status(base + path) == 401
    assert _status(base + path, ":") == 401


def _secrets(exposed: dict[str, Any]) -> list[str]:
    return [TEST_JWT_SECRET, TEST_WEBHOOK_SECRET, FLOWER_AUTH.split(":", 1)[1], PASSWORD, password_hash(),
            *exposed["tokens"], *exposed["emails"], os.environ.get("MONGODB_URI", "mongodb://"), "mongodb://"]


def test_metrics_pages_expose_no_secrets(exposed):
    """/metrics of the web, the worker's metrics port and Flower's /metrics (which Flower
    serves without authentication, by its own design) carry counters, not secrets."""
    pages = {
        "web /metrics": exposed["web"] + "/metrics",
        "worker metrics port": exposed["worker_metrics"],
        "flower /metrics": exposed["flowers"]["with_auth"] + "/metrics",
    }
    secrets = _secrets(exposed)
    for name, url in pages.items():
        status = _status(url)
        if status == 404:
            continue  # not served: nothing exposed
        assert status == 200, (name, status)
        body = _get(url)
        leaked = [s[:12] + "..." for s in secrets if s and s in body]
        assert not leaked, f"{name} leaks {leaked}"
        assert "Authorization" not in body and "Bearer " not in body, name


@pytest.mark.parametrize("path", ["/api/health", "/api/health/ready", "/api/openapi.json", "/api/docs"])
def test_public_pages_expose_no_secrets(exposed, path):
    r = exposed["http"].request("GET", path)
    assert r.status in (200, 503), r
    body = r.body.decode(errors="replace")
    leaked = [s[:12] + "..." for s in _secrets(exposed) if s and s in body]
    assert not leaked, f"{path} leaks {leaked}"
