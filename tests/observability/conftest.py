"""Fixtures of the observability suite: real gunicorn, Celery, Flower, a loopback Sentry.

Each module that starts app processes gives them their own Redis database number
and MongoDB database (tests/support/env.py: ``redis_db``, ``migrated_db``), so a
session worker of another suite (same Redis server) cannot take their messages,
and another suite's ``fresh_db`` cannot drop their data.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.observability.helpers import FakeSentry


@pytest.fixture(scope="module")
def fake_sentry() -> Iterator[FakeSentry]:
    server = FakeSentry().start()
    try:
        yield server
    finally:
        server.stop()
