"""Chaos fixtures: private stores, a per-test stack, the scale and the report.

Scale: ``CHAOS_SCALE=ci|full``. Unset, it is ``full`` when pytest was asked for
tests/chaos only (``make chaos``) and ``ci`` otherwise (``make test``), so CI runs
a short variant of every scenario and ``make chaos`` the long one.

Every scenario adds a row to the report, printed at the end of the run and
written to ``var/chaos/last-run-<scale>.json``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stores import MongoServer, RedisServer
from tests.chaos.chaoskit import SCALES, ChaosStack, Scale
from tests.support.env import ROOT, child_env
from tests.support.outcome import failed
from tests.support.store import drop_database_unblocked

REPORT_DIR = ROOT / "var" / "chaos"
_rows: list[dict[str, Any]] = []


def _scale_name(config: pytest.Config) -> str:
    explicit = os.environ.get("CHAOS_SCALE", "").strip().lower()
    if explicit:
        if explicit not in SCALES:
            raise pytest.UsageError(f"CHAOS_SCALE must be one of {', '.join(SCALES)}, got {explicit!r}")
        return explicit
    chaos_dir = (ROOT / "tests" / "chaos").resolve()
    targets = []
    for arg in config.invocation_params.args:
        path = Path(str(arg).split("::", 1)[0])
        if not str(arg).startswith("-") and (config.invocation_params.dir / path).exists():
            targets.append((config.invocation_params.dir / path).resolve())
    if targets and all(t == chaos_dir or chaos_dir in t.parents for t in targets):
        return "full"
    return "ci"


@pytest.fixture(scope="session")
def chaos_scale(pytestconfig: pytest.Config) -> Scale:
    return SCALES[_scale_name(pytestconfig)]


@pytest.fixture(scope="session")
def chaos_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MongoServer, RedisServer]]:
    """A SecantusDB (test commands on) and a Redis that only chaos tests use."""
    base = tmp_path_factory.mktemp("chaos-stores")
    mongo = MongoServer(base / "mongo", test_commands=True)
    redis = RedisServer(base / "redis")
    try:
        mongo.start(timeout=60)
        redis.start()
        yield mongo, redis
    finally:
        redis.stop()
        mongo.stop()


def _reset_clients() -> None:
    import infra.config
    from infra.mongo import reset_client
    from infra.redis_client import reset_redis

    infra.config.reset_settings()
    reset_client()
    reset_redis()


@pytest.fixture
def chaos(stack_env: dict[str, str], chaos_stores: tuple[MongoServer, RedisServer], tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[tuple[ChaosStack, Any]]:
    """A stack on the private stores (nothing started yet) and its empty, migrated database.

    The test process itself points at the private stores for the duration of the test.
    """
    import migrations
    from infra.mongo import get_db
    from infra.redis_client import get_redis

    mongo, redis = chaos_stores
    if not mongo.alive:  # a scenario that failed half-way may have left it stopped
        mongo.start(timeout=60)
    if not redis.alive:
        redis.start()
    monkeypatch.setenv("MONGODB_URI", mongo.uri)
    monkeypatch.setenv("REDIS_URL", redis.url)
    _reset_clients()
    db = get_db()
    db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    drop_database_unblocked(db)
    migrations.up(db)
    get_redis().flushall()
    env = child_env(stack_env, {"MONGODB_URI": mongo.uri, "REDIS_URL": redis.url, "RATE_LIMIT_ENABLED": "false",
                                 "LOG_LEVEL": "INFO"})
    stack = ChaosStack(mongo, redis, env, tmp_path)
    try:
        yield stack, db
    finally:
        if failed(request):
            # Printed at teardown: pytest shows it under the failure, the only place CI keeps.
            print("=== chaos stack at failure ===\n" + stack.diagnose(), flush=True)
        stack.close()
        try:
            db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
        except Exception:  # noqa: BLE001 - the store may be the thing that was struck
            pass
        monkeypatch.undo()
        _reset_clients()


@pytest.fixture
def report(chaos_scale: Scale) -> Any:
    """``report(row)`` records one scenario's figures for the summary and the JSON file."""

    def add(row: dict[str, Any]) -> None:
        _rows.append(row)
        REPORT_DIR.mkdir(parents=True, exist_ok=True)
        path = REPORT_DIR / f"last-run-{chaos_scale.name}.json"
        payload = {"scale": chaos_scale.as_dict(), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "rows": [r for r in _rows if r["scale"] == chaos_scale.name]}
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")

    return add


COLUMNS = (("scenario", 22), ("scale", 5), ("requests", 8), ("accepted", 8), ("settled", 7), ("failed", 6),
           ("lost", 4), ("doubled", 7), ("client_retries", 14), ("drain_after_recovery_s", 22))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _rows:
        return
    tr = terminalreporter
    tr.section("chaos report")
    tr.write_line(" ".join(name.ljust(width) for name, width in COLUMNS))
    for row in _rows:
        tr.write_line(" ".join(str(row.get(name, "")).ljust(width) for name, width in COLUMNS))
    scales = sorted({r["scale"] for r in _rows})
    for scale in scales:
        tr.write_line(f"written to {REPORT_DIR / f'last-run-{scale}.json'}")
