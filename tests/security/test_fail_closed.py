"""Fail closed (issue 15): a process started without ``APP_ENV`` runs as production.

Real processes, as an operator would start them from the Procfile: without the
secrets they refuse to start with one line naming the variable; with them they
serve no debug route and the worker registers no test-only task.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from celery import Celery

from devstack.stores import free_port, stop_all
from tests.support.env import ROOT, migrated_db
from tests.support.stack import RoleWorker, Web

pytestmark = pytest.mark.slow

REDIS_DB = 7  # this module's own broker database: no other suite's worker reads it
DB_NAME = "purser_fail_closed"
SECRETS = ("JWT_SECRET", "PROVIDER_WEBHOOK_SECRET", "FLOWER_BASIC_AUTH")
CONFIG_LINE = re.compile(r"^purser: configuration error: (\w+): ")


def production_env(stack_env: dict[str, str], var_dir: Path, *, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The stack's stores and secrets with APP_ENV unset (and ``drop`` removed)."""
    env = {**os.environ, **stack_env}
    for name in ("APP_ENV", "PURSER_DUPLICATE_DOORBELLS", "PROMETHEUS_MULTIPROC_DIR", *drop):
        env.pop(name, None)
    env.setdefault("PAYOUT_PROVIDER_URL", "https://payouts.provider.example/v1")  # required in production
    env.update(PURSER_VAR_DIR=str(var_dir), MONGODB_DB=DB_NAME, PYTHONUNBUFFERED="1",
               REDIS_URL=re.sub(r"/\d+$", f"/{REDIS_DB}", stack_env["REDIS_URL"]))
    return env


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
                          stdin=subprocess.DEVNULL)


def _config_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONFIG_LINE.match(line)]


def _assert_refused(done: subprocess.CompletedProcess[str], status: int, variable: str) -> None:
    assert done.returncode == status, (done.returncode, done.stderr[-2000:])
    lines = _config_errors(done.stderr)
    assert len(lines) == 1, done.stderr[-2000:]
    assert CONFIG_LINE.match(lines[0]).group(1) == variable, lines  # type: ignore[union-attr]
    assert "production" in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("missing", ["JWT_SECRET", "PROVIDER_WEBHOOK_SECRET"])
def test_web_without_app_env_refuses_to_start_without_secrets(stack_env, tmp_path, missing):
    env = production_env(stack_env, tmp_path / "var", drop=(missing,))
    env.update(WEB_BIND=f"127.0.0.1:{free_port()}", WEB_CONCURRENCY="1")
    started = time.monotonic()
    done = _run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "api:create_app()"], env)
    # Gunicorn's "App failed to load" status: the master stops instead of respawning forever.
    _assert_refused(done, 4, missing)
    assert time.monotonic() - started < 60
    assert not (tmp_path / "var" / "secrets").exists(), "a secret was generated without APP_ENV"


@pytest.mark.parametrize("command", [["worker", "--pool=solo"], ["beat"]])
def test_worker_and_beat_without_app_env_refuse_to_start_without_jwt_secret(stack_env, tmp_path, command):
    env = production_env(stack_env, tmp_path / "var", drop=("JWT_SECRET",))
    done = _run([sys.executable, "-m", "celery", "-A", "workers", *command], env)
    _assert_refused(done, 2, "JWT_SECRET")
    assert not (tmp_path / "var" / "secrets").exists()


def test_worker_without_app_env_refuses_the_duplicate_doorbell_switch(stack_env, tmp_path):
    env = production_env(stack_env, tmp_path / "var")
    env["PURSER_DUPLICATE_DOORBELLS"] = "1"
    done = _run([sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool=solo"], env)
    _assert_refused(done, 2, "PURSER_DUPLICATE_DOORBELLS")


def test_flower_without_app_env_refuses_to_start_without_basic_auth(stack_env, tmp_path):
    env = production_env(stack_env, tmp_path / "var", drop=("FLOWER_BASIC_AUTH",))
    done = _run([sys.executable, "-m", "celery", "-A", "workers", "flower", "--address=127.0.0.1",
                 f"--port={free_port()}"], env)
    _assert_refused(done, 2, "FLOWER_BASIC_AUTH")


# --- with the secrets: production behaviour -----------------------------------------------------


@pytest.fixture(scope="module")
def production_stack(stack_env: dict[str, str],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Web, RoleWorker, Path]]:
    """Gunicorn and a ledger worker started with the secrets but without APP_ENV."""
    base = tmp_path_factory.mktemp("fail-closed")
    migrated_db(stack_env["MONGODB_URI"], DB_NAME)
    env = production_env(stack_env, base / "var")
    web = Web(env, base / "gunicorn.log", concurrency=1)
    worker = RoleWorker("worker", env, base / "worker.log", queues=["ledger.0", "ledger.1"])
    started = []
    try:
        started.append(web.start())
        started.append(worker.start())
        yield web, worker, base / "var"
    finally:
        stop_all(started)


def test_production_web_serves_no_debug_route(production_stack):
    web, _, var_dir = production_stack
    for method in ("GET", "POST"):
        r = requests.request(method, web.base_url + "/api/test/error", data=b"{}", timeout=10)
        assert r.status_code == 404, (method, r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("application/problem+json")
    assert requests.get(web.base_url + "/api/health", timeout=10).status_code == 200
    paths = requests.get(web.base_url + "/api/openapi.json", timeout=10).json()["paths"]
    assert not any(path.startswith("/api/test") for path in paths)
    assert not (var_dir / "secrets").exists(), "a secret was generated without APP_ENV"


def test_production_worker_registers_no_test_only_task(production_stack):
    _, worker, _ = production_stack
    probe = Celery("fail-closed-probe", broker=worker.env["REDIS_URL"])  # type: ignore[index]
    try:
        registered: dict[str, list[str]] = {}
        deadline = time.monotonic() + 30
        while not registered and time.monotonic() < deadline:
            registered = probe.control.inspect(destination=[worker.nodename], timeout=2).registered() or {}
        tasks = set(registered.get(worker.nodename, []))
    finally:
        probe.close()
    assert "ledger.settle" in tasks, registered
    assert not tasks & {"debug.boom", "bench.noop"}, tasks
    assert not any(name.startswith(("debug.", "bench.")) for name in tasks), tasks
