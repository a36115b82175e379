"""A real gunicorn for hostile requests, with a Redis of its own that no worker reads.

Nothing consumes that Redis, so a doorbell that a refused request should never have
published would still be sitting in a ``ledger.*`` list (and its ``purser:ring:*``
flag would be set) when the test looks. The database is the session SecantusDB,
emptied once per module and seeded with a small cast.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from devstack.stores import RedisServer, stop_all
from ledger.timeutil import utcnow
from tests.support.client import ApiClient
from tests.support.env import child_env
from tests.support.seeding import User, seed_users
from tests.support.stack import Web
from tests.support.store import drop_database_unblocked

COUNTED = ("jobs", "form_keys", "users", "wallets", "contents", "plans", "subscriptions",
           "unlocks", "auditlogs")


@dataclass
class Cast:
    fan: User  # free
    other: User  # free, the attacker in IDOR tests
    creator: User
    admin: User
    content_id: str
    fan_job_id: str  # a top-up job owned by fan (queued: nothing settles here)
    fan_subscription_id: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Target:
    web: Web
    http: ApiClient
    redis: redis_lib.Redis
    db: Any
    cast: Cast
    partitions: int

    def snapshot(self) -> dict[str, Any]:
        """Everything a refused request must leave untouched."""
        counts = {name: self.db[name].count_documents({}) for name in COUNTED}
        # Idempotency keys are held by jobs (issue 24): a refused request claims none.
        counts["keyed_jobs"] = self.db.jobs.count_documents({"idem": {"$exists": True}})
        queues = {f"ledger.{p}": self.redis.llen(f"ledger.{p}") for p in range(self.partitions)}
        queues["purser.default"] = self.redis.llen("purser.default")
        rings = sorted(k.decode() for k in self.redis.scan_iter(match="purser:ring:*", count=1000))
        return {"counts": counts, "queues": queues, "rings": rings}


StartWeb = Callable[[Path, dict[str, str]], Web]


@pytest.fixture(scope="session")
def start_web(stack_env: dict[str, str]) -> StartWeb:
    """``start_web(logs, extra_env)``: one gunicorn process (4 threads) of the session stack,
    ``extra_env`` over it; the caller stops it."""

    def start(logs: Path, extra: dict[str, str]) -> Web:
        env = child_env(stack_env, {"WEB_THREADS": "4", "LOG_LEVEL": "WARNING", **extra})
        return Web(env, logs / f"gunicorn-{uuid.uuid4().hex[:6]}.log", concurrency=1).start(timeout=90)

    return start


def _clean(db: Any) -> None:
    import migrations
    drop_database_unblocked(db)
    migrations.up(db)


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("sec-redis") / "data")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def target(start_web: StartWeb, private_redis: RedisServer,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    import infra.config
    from infra.mongo import get_db, reset_client

    infra.config.reset_settings()
    reset_client()
    db = get_db()
    _clean(db)
    logs = tmp_path_factory.mktemp("security")
    web = start_web(logs, {"REDIS_URL": private_redis.url, "RATE_LIMIT_ENABLED": "false"})
    try:
        http = ApiClient(web.base_url, timeout=60)
        fan, other = seed_users(db, 2, "free", "fan")
        creator = seed_users(db, 1, "creator", "creator")[0]
        admin = seed_users(db, 1, "admin", "admin")[0]
        r = http.request("POST", "/api/premium/content", json_body={"title": "secret", "price": 50},
                         token=creator.token)
        assert r.status == 201, r
        content_id = r.json["contentId"]
        r = http.request("PUT", "/api/subscription/plan", json_body={"price": 30, "periodDays": 30},
                         token=creator.token)
        assert r.status == 200, r
        r = http.webhook(fan.id, 500)
        assert r.status == 202, r
        sub_id = str(uuid.uuid4().hex[:24])
        now = utcnow()
        db.subscriptions.insert_one({
            "_id": sub_id, "subscriberId": fan.id, "creatorId": creator.id, "price": 30, "periodDays": 30,
            "status": "active", "autoRenew": True, "startedAt": now, "expiresAt": now + timedelta(days=30),
            "renewals": 0, "jobId": None, "createdAt": now})
        db.unlocks.insert_one({"userId": fan.id, "contentId": content_id, "creatorId": creator.id, "price": 50,
                               "jobId": None, "createdAt": now})
        cast = Cast(fan, other, creator, admin, content_id, r.json["jobId"], sub_id)
        client = redis_lib.Redis.from_url(private_redis.url)
        # The set-up top-up rang its partition: forget the flag (it would expire mid-test);
        # its message stays, and the queues are compared before and after each request.
        for key in client.scan_iter(match="purser:ring:*"):
            client.delete(key)
        yield Target(web, http, client, db, cast, infra.config.get_settings().ledger_partitions)
        client.close()
    finally:
        stop_all([web])
