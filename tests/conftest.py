"""Shared fixtures: real SecantusDB, Redis, Celery workers and gunicorn. No mocks.

Stores start lazily: a test (or fixture) that does not ask for ``mongo_server``,
``redis_server`` or ``stack_env`` starts nothing, so ``tests/unit`` stays fast.
Child processes get :func:`tests.support.env.child_env` (``os.environ``, then
``stack_env``, then the test's overrides); the test process itself sees the same
variables in ``os.environ`` (set by the fixtures below). Worker and web processes
run the Procfile's command lines (tests/support/stack.py). Helpers live in
``tests/support``; suites import from there, never from a conftest or another suite.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from devstack.ports import free_port
from devstack.stores import ManagedProcess, MongoServer, RedisServer, install_signal_cleanup, stop_all
from tests.support.env import TEST_ENV_BASE, child_env
from tests.support.outcome import FAILED
from tests.support.stack import RoleWorker, Web, Workers
from tests.support.store import drop_database_unblocked


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember whether a test's call failed (``tests/support/outcome.py``): the console's
    screenshot and the chaos stack's dump are taken at teardown, only then."""
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM from CI must still run fixture teardown, or stores outlive the run.
    install_signal_cleanup()


def _reset_settings() -> None:
    import infra.config

    infra.config.reset_settings()


@pytest.fixture(scope="session")
def purser_var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``PURSER_VAR_DIR`` for the session (generated dev secrets, beat schedule, sockets)."""
    return tmp_path_factory.mktemp("var")


@pytest.fixture(scope="session", autouse=True)
def _purser_test_environment(purser_var_dir: Path) -> Iterator[dict[str, str]]:
    """The test variables in ``os.environ`` for the whole session; starts no process."""
    import infra.config

    values = {**TEST_ENV_BASE, "PURSER_VAR_DIR": str(purser_var_dir)}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in values.items():
            mp.setenv(name, value)
        infra.config.reset_settings()
        yield values
    _reset_settings()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the session; ``REDIS_URL`` points at it."""
    server = RedisServer(tmp_path_factory.mktemp("redis") / "data")
    try:
        server.start()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("REDIS_URL", server.url)
            _reset_settings()
            yield server
    finally:
        server.stop()
        _reset_settings()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """A SecantusDB with test commands (failpoints) on; ``MONGODB_URI`` points at it."""
    server = MongoServer(tmp_path_factory.mktemp("mongo") / "data", test_commands=True)
    try:
        server.start()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MONGODB_URI", server.uri)
            _reset_settings()
            yield server
    finally:
        server.stop()
        _reset_settings()


@pytest.fixture(scope="session")
def provider_sim_port() -> int:
    """The port the payout provider simulator listens on when a test starts it (tests/api/test_payouts.py)."""
    return free_port()


@pytest.fixture(scope="session")
def stack_env(
    _purser_test_environment: dict[str, str], mongo_server: MongoServer, redis_server: RedisServer,
    provider_sim_port: int,
) -> dict[str, str]:
    """Purser variables for child processes (merge over ``os.environ``), stores started.

    Every process knows the payout provider: the simulator on a port reserved for the
    session, started only by the tests that need it (elsewhere submissions find it down).
    Here, not in one suite's conftest: the session's workers are started by whichever
    suite needs them first, and with pytest-xdist that order differs per worker.
    """
    return {**_purser_test_environment, "MONGODB_URI": mongo_server.uri, "REDIS_URL": redis_server.url,
            "PAYOUT_PROVIDER_URL": f"http://127.0.0.1:{provider_sim_port}"}


StartWorker = Callable[..., RoleWorker]
StartWeb = Callable[..., Web]


@pytest.fixture
def celery_worker_proc(stack_env: dict[str, str], tmp_path: Path) -> Iterator[StartWorker]:
    """Factory: ``start_worker(role="worker", queues=None, concurrency=None, extra_env=None) -> RoleWorker``.

    ``role`` is a Procfile worker role: ``worker`` (the ledger queues) or
    ``housekeeping`` (``purser.default``). Returns once the worker is ready; every
    worker is stopped (SIGTERM, then SIGKILL after 10 s) when the test ends,
    whatever its outcome.
    """
    started: list[ManagedProcess] = []
    numbers = itertools.count(1)

    def start_worker(
        role: str = "worker",
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> RoleWorker:
        worker = RoleWorker(role, child_env(stack_env, extra_env), tmp_path / f"{role}-{next(numbers)}.log",
                            queues=queues, concurrency=concurrency)
        started.append(worker)
        return worker.start()

    try:
        yield start_worker
    finally:
        stop_all(started)


@pytest.fixture
def web_server(stack_env: dict[str, str], tmp_path: Path) -> Iterator[StartWeb]:
    """Factory: ``start_web(concurrency=2, extra_env=None) -> WebServer`` (``.base_url``, ``.stop()``).

    Returns once ``GET /api/health`` answers 200; stopped when the test ends.
    """
    started: list[ManagedProcess] = []
    numbers = itertools.count(1)

    def start_web(concurrency: int = 2, extra_env: Mapping[str, str] | None = None) -> Web:
        server = Web(child_env(stack_env, extra_env), tmp_path / f"gunicorn-{next(numbers)}.log",
                     concurrency=concurrency)
        started.append(server)
        return server.start()

    try:
        yield start_web
    finally:
        stop_all(started)


# --- shared stack fixtures for API, settlement and subscription suites ------------------


def _clean_database() -> None:
    """Drop the test database, re-apply migrations and forget ring flags and published backlogs.

    Only Purser's own Redis keys are deleted: FLUSHDB would also drop kombu's queue
    bindings and silently stop routing to a running worker.
    """
    import migrations
    from infra.mongo import get_db
    from infra.redis_client import get_redis

    db = get_db()
    drop_database_unblocked(db)
    migrations.up(db)
    redis = get_redis()
    for key in redis.scan_iter(match="purser:ring:*", count=500):
        redis.delete(key)
    for key in redis.scan_iter(match="purser:lock:*", count=500):
        redis.delete(key)
    redis.delete("purser:backlog")  # a partition published as full by an earlier test would shed 503s
    from services.contents import forget_known_contents
    from services.wallets import forget_known_users

    forget_known_users()  # this process's app remembers users the dropped database no longer has
    forget_known_contents()


@pytest.fixture
def fresh_db(stack_env: dict[str, str]) -> Iterator[Any]:
    """A migrated, empty ``purser_test`` database for one test (session stores)."""
    from infra.mongo import get_db, reset_client
    from infra.redis_client import reset_redis

    _reset_settings()
    reset_client()
    reset_redis()
    _clean_database()
    yield get_db()


@pytest.fixture(scope="session")
def session_worker(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """Both Procfile worker roles, shared by a session: ``worker`` (ledger queues, pool of
    2 through ``WORKER_CONCURRENCY``) and ``housekeeping`` (``purser.default``).

    ``.nodename`` is the ledger worker's, ``.log_tail()`` reads both logs. Tests that
    kill or reconfigure workers use ``celery_worker_proc`` instead.
    """
    workers = Workers.create(child_env(stack_env, WORKER_CONCURRENCY="2"), tmp_path_factory.mktemp("workers"))
    try:
        workers.start()
        yield workers
    finally:
        stop_all(workers.processes)


@pytest.fixture
def app_client(fresh_db: Any, session_worker: Workers) -> Iterator[Any]:
    """An :class:`ApiClient` over the real Flask app (test client), with a live worker."""
    from api import create_app
    from infra.config import get_settings
    from tests.support.client import ApiClient

    app = create_app(get_settings())
    with app.test_client() as flask_client:
        yield ApiClient(flask_client=flask_client)
