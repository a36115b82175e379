"""One real gunicorn (2 processes x 8 threads) and one Celery worker (prefork, 2
processes) for the whole concurrency module; each test gets an empty database.

No beat runs here on purpose: every job must settle through its doorbell alone,
so a lost or skipped doorbell shows up as a test that does not drain instead of
being papered over by the sweeper.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from devstack.apps import WebServer, WorkerProcess
from devstack.stores import stop_all
from tests.concurrency.loadkit import Http
from tests.conftest import ROOT, _child_env


@dataclass
class Stack:
    web: WebServer
    worker: WorkerProcess
    http: Http


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("concurrency")
    env = _child_env(stack_env, {"WEB_THREADS": "8", "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING"})
    web = WebServer(env, logs / "gunicorn.log", concurrency=2, cwd=ROOT)
    worker = WorkerProcess(env, logs / "worker.log", concurrency=2, cwd=ROOT)
    try:
        web.start(timeout=60)
        worker.start(timeout=60)
        yield Stack(web, worker, Http(web.base_url, timeout=120))
    finally:
        stop_all([web, worker])


@pytest.fixture
def conc(stack: Stack, fresh_db: Any) -> Iterator[tuple[Stack, Any]]:
    """The module's stack and an empty, migrated database; the worker must stay alive."""
    yield stack, fresh_db
    assert stack.worker.alive, f"the worker died:\n{stack.worker.log_tail(60)}"
    assert stack.web.alive, f"gunicorn died:\n{stack.web.log_tail(60)}"
