"""Fixtures of the API suites (the stack fixtures live in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import Api


@pytest.fixture
def api(app_client: Any, fresh_db: Any) -> Api:
    """The real Flask app (test client) over SecantusDB and Redis, with a live Celery worker."""
    return Api(app_client, fresh_db)
