"""One real gunicorn (2 processes x 8 threads) and the Procfile's two worker roles
(the ledger worker with a pool of 2, the housekeeping worker) for the whole
concurrency module; each test gets an empty database.

No beat runs here on purpose: every job must settle through its doorbell alone,
so a lost or skipped doorbell shows up as a test that does not drain instead of
being papered over by the sweeper.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devstack.stores import stop_all
from tests.support.client import ApiClient
from tests.support.env import child_env
from tests.support.stack import Web, Workers


@dataclass
class Stack:
    web: Web
    workers: Workers
    http: ApiClient


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("concurrency")
    env = child_env(stack_env, WEB_THREADS="8", RATE_LIMIT_ENABLED="false", LOG_LEVEL="WARNING",
                    WORKER_CONCURRENCY="2")
    web = Web(env, logs / "gunicorn.log", concurrency=2)
    workers = Workers.create(env, logs)
    try:
        web.start(timeout=60)
        workers.start(timeout=60)
        yield Stack(web, workers, ApiClient(web.base_url, timeout=120))
    finally:
        stop_all([web, *workers.processes])


@pytest.fixture
def conc(stack: Stack, fresh_db: Any) -> Iterator[tuple[Stack, Any]]:
    """The module's stack and an empty, migrated database; the workers must stay alive."""
    yield stack, fresh_db
    assert stack.workers.alive, f"a worker died:\n{stack.workers.log_tail(60)}"
    assert stack.web.alive, f"gunicorn died:\n{stack.web.log_tail(60)}"
