"""A stack of its own for the webhook suite: gunicorn, the ledger, housekeeping and webhooks workers,
beat (webhook tick every second) and a receiver process, on a Redis database and a
MongoDB database no other suite's worker reads, so a delivery can only be taken by
this module's webhooks worker (the SIGKILL test depends on it).

Retries are scaled down (``WEBHOOK_BACKOFF_SECONDS=1,1,1,1``: five attempts in about
four seconds) and the per-attempt timeout is 2 s (a lease of 9 s).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from devstack.ports import free_port
from devstack.stores import stop_all
from tests.support.client import ApiClient
from tests.support.env import child_env, migrated_db, redis_db
from tests.support.receiver import Receiver
from tests.support.seeding import User, seed_users
from tests.support.stack import Beat, RoleWorker, Web

REDIS_DB = 6
DB_NAME = "purser_webhooks"


@dataclass
class Stack:
    env: dict[str, str]
    logs: Path
    web: Web
    ledger: RoleWorker
    housekeeping: RoleWorker
    webhooks: RoleWorker
    beat: Beat
    receiver: Receiver
    http: ApiClient
    db: Any
    admin: User
    extra: list[Any] = field(default_factory=list)

    def new_webhooks_worker(self) -> RoleWorker:
        worker = RoleWorker("webhooks", self.env, self.logs / f"webhooks-{len(self.extra) + 2}.log")
        self.extra.append(worker)
        self.webhooks = worker.start(timeout=60)
        return worker

    @property
    def processes(self) -> list[Any]:
        return [self.web, self.ledger, self.housekeeping, self.webhooks, self.beat, self.receiver, *self.extra]

    def logs_tail(self) -> str:
        return "\n".join(p.log_tail(40) for p in (self.webhooks, self.housekeeping, self.ledger, self.beat))


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("webhooks")
    migrated_db(stack_env["MONGODB_URI"], DB_NAME)
    env = child_env(stack_env, MONGODB_DB=DB_NAME, REDIS_URL=redis_db(stack_env["REDIS_URL"], REDIS_DB),
                    WEBHOOK_BACKOFF_SECONDS="1,1,1,1", WEBHOOK_TIMEOUT_SECONDS="2", WEBHOOK_TICK_SECONDS="1",
                    WORKER_CONCURRENCY="2", SWEEP_INTERVAL_SECONDS="2", WEBHOOKS_METRICS_PORT=str(free_port()))
    client: MongoClient = MongoClient(stack_env["MONGODB_URI"], tz_aware=True)
    db = client[DB_NAME]
    web = Web(env, logs / "gunicorn.log", concurrency=1)
    ledger = RoleWorker("worker", env, logs / "worker.log")
    housekeeping = RoleWorker("housekeeping", env, logs / "housekeeping.log")
    webhooks = RoleWorker("webhooks", env, logs / "webhooks-1.log")
    beat = Beat(env, logs / "beat.log", logs / "celerybeat-schedule")
    receiver = Receiver(logs / "receiver.log")
    started: list[Any] = []
    stack_: Stack | None = None
    try:
        for process in (receiver, web, ledger, housekeeping, webhooks, beat):
            started.append(process)
            process.start(timeout=60)
        admin = seed_users(db, 1, role="admin", prefix="hookadmin")[0]
        stack_ = Stack(env, logs, web, ledger, housekeeping, webhooks, beat, receiver,
                       ApiClient(web.base_url, timeout=30), db, admin)
        yield stack_
    finally:
        if stack_ is not None:
            stack_.http.close()  # an idle keep-alive connection would hold gunicorn's graceful stop
        stop_all(stack_.processes if stack_ is not None else started)
        client.close()


@pytest.fixture
def hooks(stack: Stack) -> Iterator[Stack]:
    """The stack; endpoints registered by the test are disabled afterwards (they would
    receive every later test's events)."""
    before = {e["_id"] for e in stack.db.webhook_endpoints.find({}, {"_id": 1})}
    yield stack
    for endpoint in stack.db.webhook_endpoints.find({"_id": {"$nin": sorted(before)}, "status": "active"}):
        stack.http.request("DELETE", f"/api/admin/webhooks/{endpoint['_id']}", token=stack.admin)
    assert stack.web.alive and stack.ledger.alive, stack.logs_tail()
