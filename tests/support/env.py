"""The test environment: fixed secrets, the variables every stack gets, child environments.

Every process a test starts (gunicorn, Celery, beat) gets :func:`child_env`: this
process's environment, the session stack's variables (``stack_env`` fixture: store
URLs and :data:`TEST_ENV_BASE`), then the test's own overrides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TEST_JWT_SECRET = "purser-test-jwt-secret-0123456789abcdef012345678"
TEST_WEBHOOK_SECRET = "purser-test-webhook-secret-0123456789"
assert len(TEST_JWT_SECRET) == 48

TEST_ENV_BASE = {
    "APP_ENV": "test",
    "MONGODB_DB": "purser_test",
    "JWT_SECRET": TEST_JWT_SECRET,
    "PROVIDER_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
    "RATE_LIMIT_ENABLED": "false",
    # The backlog limit stays on, with a horizon the suites' bursts never reach on a loaded
    # 2-core machine (their subject is correctness); tests/api/test_backlog_limit.py and the
    # bench's live stream hold it at the default 5 s.
    "BACKLOG_MAX_SECONDS": "60",
    "LEDGER_PARTITIONS": "4",
    "LOG_LEVEL": "INFO",
    # Job webhooks go to receivers on 127.0.0.1 (tests/webhooks); production mode refuses them.
    "WEBHOOK_ALLOW_PRIVATE": "true",
    # Both worker roles' metrics servers would want their default port (9808, 9809);
    # tests that need one pass a free port.
    "WORKER_METRICS_PORT": "0",
    "HOUSEKEEPING_METRICS_PORT": "0",
    "WEBHOOKS_METRICS_PORT": "0",
}


def child_env(stack_env: Mapping[str, str], extra: Mapping[str, str] | None = None, **more: str) -> dict[str, str]:
    """Environment of a child process: ours, the stack's, then ``extra`` and ``more``."""
    env = {**os.environ, **stack_env, "PYTHONUNBUFFERED": "1"}
    env.update(extra or {})
    env.update(more)
    return env


def redis_db(url: str, number: int) -> str:
    """``url`` with its database number replaced (a module's processes get their own)."""
    return re.sub(r"/\d+$", f"/{number}", url)


def migrated_db(mongodb_uri: str, name: str) -> None:
    """Drop database ``name`` and apply the migrations to it."""
    from pymongo import MongoClient

    import migrations

    client: MongoClient = MongoClient(mongodb_uri, tz_aware=True)
    try:
        client.drop_database(name)
        migrations.up(client[name])
    finally:
        client.close()
