"""Rate limits on real Redis: shared by two gunicorn workers, per tier, failed logins, register.

The gunicorn servers of this module trust one proxy hop (``TRUSTED_PROXIES=1``) so
each test can speak from its own client address through ``X-Forwarded-For``; the
in-process apps (Flask test client, same Redis server, own database number) cover
the configurations that need no second process: no trusted proxy, a tight webhook
limit, limits turned off.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from pymongo import MongoClient

from api.auth import issue_token
from devstack.apps import WebServer
from devstack.stores import free_port, stop_all
from infra.config import Settings, get_settings
from services import users
from tests.observability.helpers import json_lines, samples
from tests.support.env import ROOT, child_env, migrated_db, redis_db
from tests.support.waiting import wait_for

DB_NAME = "purser_obs_limits"
WEB_REDIS_DB = 2
INPROC_REDIS_DB = 4
PASSWORD = "correct-horse-9"


def _clear_limits(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        for pattern in ("LIMITS:*", "purser:login-failures:*"):
            for key in client.scan_iter(match=pattern, count=500):
                client.delete(key)
    finally:
        client.close()


@dataclasses.dataclass
class Servers:
    web: WebServer
    down: WebServer
    db: Any

    def user(self, role: str = "free") -> tuple[str, str]:
        """A user created in the store directly (registering would spend the register limit)."""
        user = users.create_user(self.db, f"rl-{uuid.uuid4().hex[:12]}@example.com", PASSWORD, role=role)
        token, _ = issue_token(get_settings(), user["_id"], role)
        return user["_id"], token


@pytest.fixture(scope="module")
def servers(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    base = tmp_path_factory.mktemp("obs-limits")
    migrated_db(stack_env["MONGODB_URI"], DB_NAME)
    web_redis = redis_db(stack_env["REDIS_URL"], WEB_REDIS_DB)
    _clear_limits(web_redis)
    common = {"MONGODB_DB": DB_NAME, "RATE_LIMIT_ENABLED": "true", "TRUSTED_PROXIES": "1"}
    web = WebServer(child_env(stack_env, REDIS_URL=web_redis, **common), base / "gunicorn.log",
                    concurrency=2, cwd=ROOT)
    # Nothing listens on this port: Redis is "down" for this server from the start.
    down = WebServer(child_env(stack_env, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", **common),
                     base / "gunicorn-down.log", concurrency=1, cwd=ROOT)
    client: MongoClient = MongoClient(stack_env["MONGODB_URI"], tz_aware=True)
    started: list[Any] = []
    try:
        started.append(web.start())
        started.append(down.start())
        yield Servers(web, down, client[DB_NAME])
    finally:
        stop_all(started)
        client.close()


def _get(server: WebServer, path: str, token: str | None = None, address: str | None = None) -> requests.Response:
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if address:
        headers["X-Forwarded-For"] = address
    # A new connection per request, so both gunicorn workers answer some of them.
    return requests.get(server.base_url + path, headers=headers, timeout=10)


def _login(server: WebServer, email: str, address: str, *, password: str = "wrong-pass",
           raw: bytes | None = None, path: str = "/api/auth/login") -> requests.Response:
    headers = {"X-Forwarded-For": address}
    if raw is None:
        return requests.post(server.base_url + path, json={"email": email, "password": password},
                             headers=headers, timeout=10)
    return requests.post(server.base_url + path, data=raw,
                         headers={**headers, "Content-Type": "text/plain"}, timeout=10)


def _assert_rate_limited(r: requests.Response, window: int = 60) -> None:
    assert r.status_code == 429, r.text
    assert r.headers["Content-Type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == "RATE_LIMITED" and body["status"] == 429
    assert body["requestId"] == r.headers["X-Request-ID"]
    assert 1 <= int(r.headers["Retry-After"]) <= window
    assert r.headers["X-RateLimit-Remaining"] == "0"


# --- tiers, shared by two gunicorn workers ------------------------------------------------


def test_free_user_gets_exactly_ten_across_two_gunicorn_workers(servers: Servers) -> None:
    _, token = servers.user("free")
    answers = [_get(servers.web, "/api/wallet/balance", token) for _ in range(12)]
    assert [r.status_code for r in answers] == [200] * 10 + [429] * 2

    passed = answers[:10]
    assert {r.headers["X-RateLimit-Limit"] for r in answers} == {"10"}
    assert [int(r.headers["X-RateLimit-Remaining"]) for r in passed] == list(range(9, -1, -1))
    now = time.time()
    assert all(now - 5 < int(r.headers["X-RateLimit-Reset"]) <= now + 61 for r in answers)
    for r in answers[10:]:
        _assert_rate_limited(r)

    # One budget across the tier-limited routes: the jobs list is refused too...
    _assert_rate_limited(_get(servers.web, "/api/jobs", token))
    # ...while health and metrics are not limited at all.
    health = _get(servers.web, "/api/health", token)
    assert health.status_code == 200 and "X-RateLimit-Limit" not in health.headers

    text = _get(servers.web, "/metrics").text
    assert samples(text, "purser_rate_limit_refusals_total", limit="tier", tier="free") >= 3


def test_limit_follows_the_stored_role_and_admin_is_exempt(servers: Servers) -> None:
    _, premium = servers.user("premium")
    _, creator = servers.user("creator")
    _, admin = servers.user("admin")
    assert _get(servers.web, "/api/wallet/balance", premium).headers["X-RateLimit-Limit"] == "100"
    assert _get(servers.web, "/api/wallet/balance", creator).headers["X-RateLimit-Limit"] == "500"
    answers = [_get(servers.web, "/api/wallet/balance", admin) for _ in range(15)]
    assert {r.status_code for r in answers} == {200}
    assert not any("X-RateLimit-Limit" in r.headers for r in answers)


def test_anonymous_callers_are_limited_by_address(servers: Servers) -> None:
    answers = [_get(servers.web, "/api/wallet/balance", address="10.7.0.1") for _ in range(11)]
    assert [r.status_code for r in answers] == [401] * 10 + [429]
    assert _get(servers.web, "/api/wallet/balance", address="10.7.0.2").status_code == 401


# --- login (failed attempts only) and register ---------------------------------------------------

LOCKOUT = 15 * 60  # RATE_LIMITS_LOGIN_EMAIL's window (default 5/15minutes)


def test_ten_users_log_in_from_one_address_within_a_minute(servers: Servers) -> None:
    """An office behind one address: successful logins are not counted at all."""
    people = [servers.db.users.find_one({"_id": servers.user()[0]})["email"] for _ in range(10)]
    started = time.monotonic()
    answers = [_login(servers.web, email, "10.1.0.1", password=PASSWORD) for email in people]
    assert time.monotonic() - started < 60
    assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers if r.status_code != 200]
    # A few typos from the same office are far from the address bound (100 in 15 minutes).
    typos = [_login(servers.web, email, "10.1.0.1") for email in people[:6]]
    assert [r.status_code for r in typos] == [401] * 6
    assert _login(servers.web, people[6], "10.1.0.1", password=PASSWORD).status_code == 200


def test_sixth_wrong_password_for_one_email_is_429_and_locks_the_account(servers: Servers) -> None:
    user_id, _ = servers.user()
    email = servers.db.users.find_one({"_id": user_id})["email"]
    answers = [_login(servers.web, email, "10.2.1.1") for _ in range(6)]
    assert [r.status_code for r in answers] == [401] * 5 + [429]
    _assert_rate_limited(answers[-1], window=LOCKOUT)
    assert int(answers[-1].headers["Retry-After"]) > LOCKOUT - 60
    assert answers[-1].headers["X-RateLimit-Limit"] == "5"
    # Locked from any address, even with the right password, until the window passes...
    for address in ("10.2.1.1", "10.2.1.2"):
        _assert_rate_limited(_login(servers.web, email, address, password=PASSWORD), window=LOCKOUT)
    # ...while other accounts from the same address are not affected.
    other = servers.db.users.find_one({"_id": servers.user()[0]})["email"]
    assert _login(servers.web, other, "10.2.1.1", password=PASSWORD).status_code == 200
    text = _get(servers.web, "/metrics").text
    assert samples(text, "purser_rate_limit_refusals_total", limit="login-email") >= 3


def test_failed_logins_are_limited_per_email_whatever_the_address(servers: Servers) -> None:
    email = f"Victim-{uuid.uuid4().hex[:6]}@Example.com"
    spellings = [email, email.lower(), email.upper(), f"  {email}", email, email]
    answers = [_login(servers.web, spelled, f"10.2.0.{i}") for i, spelled in enumerate(spellings, start=1)]
    assert [r.status_code for r in answers] == [401] * 5 + [429]
    assert _login(servers.web, "another@example.com", "10.2.0.99").status_code == 401


def test_a_successful_login_forgives_the_accounts_earlier_failures(servers: Servers) -> None:
    user_id, _ = servers.user()
    email = servers.db.users.find_one({"_id": user_id})["email"]
    assert [_login(servers.web, email, "10.2.2.1").status_code for _ in range(4)] == [401] * 4
    assert _login(servers.web, email, "10.2.2.1", password=PASSWORD).status_code == 200
    answers = [_login(servers.web, email, "10.2.2.1").status_code for _ in range(6)]
    assert answers == [401] * 5 + [429]


def test_a_parallel_burst_of_guesses_cannot_pass_the_bound(servers: Servers) -> None:
    """Attempts are reserved before the password is checked: 20 at once, exactly 5 verified."""
    from concurrent.futures import ThreadPoolExecutor

    user_id, _ = servers.user()
    email = servers.db.users.find_one({"_id": user_id})["email"]
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = sorted(pool.map(lambda i: _login(servers.web, email, f"10.2.3.{i}").status_code, range(20)))
    assert statuses == [401] * 5 + [429] * 15


def test_a_body_that_is_not_json_is_not_a_login_attempt(servers: Servers) -> None:
    # Refused before any password is checked: nothing to throttle, nothing counted...
    same = [_login(servers.web, "", "10.3.1.1", raw=b"not json") for _ in range(6)]
    assert {r.status_code for r in same} == {415}
    # ...registration keeps its own limit per address, whatever the body.
    register = [_login(servers.web, "", "10.3.2.1", raw=b"not json", path="/api/auth/register") for _ in range(6)]
    assert [r.status_code for r in register] == [415] * 5 + [429]
    _assert_rate_limited(register[-1])


def test_register_has_its_own_budget_per_address(servers: Servers) -> None:
    for i in range(5):
        r = requests.post(servers.web.base_url + "/api/auth/register",
                          json={"email": f"reg{i}-{uuid.uuid4().hex[:6]}@example.com", "password": PASSWORD},
                          headers={"X-Forwarded-For": "10.4.0.1"}, timeout=10)
        assert r.status_code == 201, r.text
    r = requests.post(servers.web.base_url + "/api/auth/register",
                      json={"email": f"reg-{uuid.uuid4().hex[:6]}@example.com", "password": PASSWORD},
                      headers={"X-Forwarded-For": "10.4.0.1"}, timeout=10)
    _assert_rate_limited(r)
    # Login from the same address is a separate budget.
    assert _login(servers.web, "x@example.com", "10.4.0.1").status_code == 401


# --- the stored role decides the exemption ---------------------------------------------------


def test_a_demoted_admin_is_limited_and_loses_admin_routes_within_5_s(servers: Servers) -> None:
    """Demoted in the store by another process: both gunicorn workers follow within
    ROLE_CACHE_SECONDS (5), although the token still says admin for an hour."""
    admin_id, token = servers.user("admin")
    target_id, _ = servers.user()
    unfreeze = f"/api/admin/wallets/{target_id}/unfreeze"

    def admin_call() -> int:
        return requests.post(servers.web.base_url + unfreeze, headers={"Authorization": f"Bearer {token}"},
                             timeout=10).status_code

    # Both workers answer some of these (a new connection each) and cache the role admin.
    answers = [_get(servers.web, "/api/wallet/balance", token) for _ in range(15)]
    assert {r.status_code for r in answers} == {200}
    assert not any("X-RateLimit-Limit" in r.headers for r in answers)
    assert [admin_call() for _ in range(4)] == [200] * 4

    servers.db.users.update_one({"_id": admin_id}, {"$set": {"role": "free"}})
    demoted = time.monotonic()
    seen: list[tuple[float, int]] = []
    while time.monotonic() - demoted < 5.5:
        seen.append((time.monotonic() - demoted, admin_call()))
        time.sleep(0.1)
    # A worker may have cached the role just before the demotion: it follows within the
    # cache time (a little request latency aside), never later.
    last_allowed = max((at for at, status in seen if status == 200), default=0.0)
    assert last_allowed <= 5.0 + 0.25, [(round(at, 2), status) for at, status in seen]
    assert {status for at, status in seen if at > 5.25} == {403}, seen
    # From then on every worker refuses, and the tier limit applies (free: 10).
    assert [admin_call() for _ in range(4)] == [403] * 4
    answers = [_get(servers.web, "/api/wallet/balance", token) for _ in range(12)]
    assert [r.status_code for r in answers] == [200] * 10 + [429] * 2
    assert {r.headers["X-RateLimit-Limit"] for r in answers} == {"10"}


# --- Redis down -----------------------------------------------------------------------------


def test_unreachable_redis_fails_open_with_a_warning(servers: Servers) -> None:
    _, token = servers.user("free")
    answers = [_get(servers.down, "/api/wallet/balance", token) for _ in range(12)]
    assert {r.status_code for r in answers} == {200}
    assert _login(servers.down, "nobody@example.com", "10.5.0.1").status_code == 401

    assert servers.down.log_path is not None
    warning = wait_for(lambda: next((line for line in json_lines(servers.down.log_path)
                                     if line.get("logger") == "purser.ratelimit"), None),
                       what="the fail-open warning")
    assert warning["level"] == "WARNING" and "fail open" in warning["message"]
    assert not any(line.get("level") == "ERROR" for line in json_lines(servers.down.log_path))
    text = _get(servers.down, "/metrics").text
    assert samples(text, "purser_rate_limit_storage_errors_total") >= 1


# --- in-process apps for other configurations --------------------------------------------------------


@pytest.fixture
def make_app(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``make_app(**settings_overrides) -> (flask test client, db)`` on Redis database 4."""
    import infra.config
    from infra.mongo import get_db, reset_client

    url = redis_db(stack_env["REDIS_URL"], INPROC_REDIS_DB)
    monkeypatch.setenv("MONGODB_DB", DB_NAME + "_inproc")
    monkeypatch.setenv("REDIS_URL", url)
    infra.config.reset_settings()
    reset_client()
    migrated_db(stack_env["MONGODB_URI"], DB_NAME + "_inproc")
    _clear_limits(url)

    def make(**overrides: Any) -> tuple[Any, Any]:
        from api import create_app

        settings: Settings = dataclasses.replace(get_settings(), **{"rate_limit_enabled": True, **overrides})
        return create_app(settings).test_client(), get_db()

    yield make
    infra.config.reset_settings()
    reset_client()


def test_x_forwarded_for_is_ignored_without_trusted_proxies(make_app: Any) -> None:
    client, _ = make_app(trusted_proxies=0, rate_limits_login_address="5/minute")
    statuses = [client.post("/api/auth/login", json={"email": f"p{i}@example.com", "password": "wrong-pass"},
                            headers={"X-Forwarded-For": f"192.0.2.{i}"},
                            environ_overrides={"REMOTE_ADDR": "10.9.0.1"}).status_code for i in range(6)]
    assert statuses == [401] * 5 + [429]


def test_failed_logins_per_address_have_their_own_bound(make_app: Any) -> None:
    """Many accounts guessed from one address: refused at the address bound, while
    successful logins from that address still pass (they were never counted)."""
    client, db = make_app(rate_limits_login_address="5/minute")
    people = [users.create_user(db, f"ad{i}-{uuid.uuid4().hex[:8]}@example.com", PASSWORD)["email"]
              for i in range(3)]
    for email in people:
        r = client.post("/api/auth/login", json={"email": email, "password": PASSWORD},
                        environ_overrides={"REMOTE_ADDR": "10.9.1.1"})
        assert r.status_code == 200, r.get_json()
    statuses = [client.post("/api/auth/login", json={"email": f"g{i}@example.com", "password": "wrong-pass"},
                            environ_overrides={"REMOTE_ADDR": "10.9.1.1"}).status_code for i in range(6)]
    assert statuses == [401] * 5 + [429]
    r = client.post("/api/auth/login", json={"email": people[0], "password": PASSWORD},
                    environ_overrides={"REMOTE_ADDR": "10.9.1.1"})
    assert r.status_code == 429 and r.get_json()["code"] == "RATE_LIMITED"
    assert "address" in r.get_json()["detail"]
    r = client.post("/api/auth/login", json={"email": people[0], "password": PASSWORD},
                    environ_overrides={"REMOTE_ADDR": "10.9.1.2"})
    assert r.status_code == 200


def test_webhook_has_its_own_limit(make_app: Any) -> None:
    client, db = make_app(rate_limits_webhook="3/minute")
    statuses = [client.post("/api/payments/webhook", data=b"{}", content_type="application/json",
                            headers={"X-Purser-Signature": "t=1,v1=" + "0" * 64}).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    user = users.create_user(db, f"wh-{uuid.uuid4().hex[:8]}@example.com", PASSWORD)
    token, _ = issue_token(get_settings(), user["_id"], "free")
    r = client.get("/api/wallet/balance", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "9"


def test_rate_limit_enabled_false_turns_limits_off(make_app: Any) -> None:
    client, db = make_app(rate_limit_enabled=False)
    user = users.create_user(db, f"off-{uuid.uuid4().hex[:8]}@example.com", PASSWORD)
    token, _ = issue_token(get_settings(), user["_id"], "free")
    answers = [client.get("/api/wallet/balance", headers={"Authorization": f"Bearer {token}"}) for _ in range(12)]
    assert {r.status_code for r in answers} == {200}
    assert not any("X-RateLimit-Limit" in r.headers for r in answers)
