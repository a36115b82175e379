"""One stack and one browser for the console suite (issue 26).

Real gunicorn, the ledger, housekeeping (webhook dispatch) and webhooks workers, beat
(webhook tick every second) and a webhook receiver, on a MongoDB database and a Redis database of their own; one
headless Chromium. A failing test leaves a screenshot (the path is printed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pymongo import MongoClient

from devstack.stores import stop_all
from tests.support.browser import Browser, missing
from tests.support.client import ApiClient
from tests.support.env import child_env, migrated_db, redis_db
from tests.support.outcome import failed
from tests.support.receiver import Receiver
from tests.support.seeding import User, seed_users
from tests.support.stack import Beat, RoleWorker, Web

REDIS_DB = 11
DB_NAME = "purser_console"
LOGIN_LIMIT = 3  # failed console logins per e-mail before the lockout (RATE_LIMITS_LOGIN_EMAIL)


@dataclass
class Stack:
    env: dict[str, str]
    web: Web
    workers: list[Any]  # the three worker roles and beat
    receiver: Receiver
    http: ApiClient
    db: Any
    admin: User

    @property
    def base_url(self) -> str:
        return self.web.base_url

    def logs_tail(self) -> str:
        return "\n".join(p.log_tail(30) for p in (self.web, *self.workers))


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("console")
    migrated_db(stack_env["MONGODB_URI"], DB_NAME)
    # Rate limits on (the console's login throttle is the API's), tiers far above what the suite sends.
    env = child_env(stack_env, MONGODB_DB=DB_NAME, REDIS_URL=redis_db(stack_env["REDIS_URL"], REDIS_DB),
                    RATE_LIMIT_ENABLED="true", RATE_LIMITS_FREE="10000/minute", RATE_LIMITS_PREMIUM="10000/minute",
                    RATE_LIMITS_CREATOR="10000/minute", RATE_LIMITS_AUTH="10000/minute",
                    RATE_LIMITS_LOGIN_EMAIL=f"{LOGIN_LIMIT}/15minutes", ROLE_CACHE_SECONDS="0",
                    WEBHOOK_BACKOFF_SECONDS="1", WEBHOOK_TIMEOUT_SECONDS="2", WEBHOOK_TICK_SECONDS="1",
                    WORKER_CONCURRENCY="1")
    client: MongoClient = MongoClient(stack_env["MONGODB_URI"], tz_aware=True)
    db = client[DB_NAME]
    receiver = Receiver(logs / "receiver.log")
    web = Web(env, logs / "gunicorn.log", concurrency=1)
    roles = ("worker", "housekeeping", "webhooks")
    workers: list[Any] = [RoleWorker(role, env, logs / f"{role}.log") for role in roles]
    workers.append(Beat(env, logs / "beat.log", logs / "celerybeat-schedule"))
    started: list[Any] = []
    http = None
    try:
        for process in (receiver, web, *workers):
            started.append(process)
            process.start(timeout=60)
        admin = seed_users(db, 1, role="admin", prefix="consoleadmin")[0]
        http = ApiClient(web.base_url, timeout=30)
        yield Stack(env, web, workers, receiver, http, db, admin)
    finally:
        if http is not None:
            http.close()
        stop_all(started)
        client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    reason = missing()
    if reason:
        pytest.fail(reason)
    chromium = Browser()
    try:
        yield chromium
    finally:
        chromium.quit()


@pytest.fixture(autouse=True)
def screenshot_on_failure(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if not failed(request) or "browser" not in request.fixturenames:
        return
    chromium: Browser = request.getfixturevalue("browser")
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
    path = chromium.screenshot(tmp_path_factory.getbasetemp() / "screenshots", name)
    print(f"\nscreenshot of the failing page: {path} (at {chromium.driver.current_url})")
