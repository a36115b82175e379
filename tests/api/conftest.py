"""Fixtures of the API suites (the stack fixtures live in tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import Api


@pytest.fixture
def api(app_client: Any, fresh_db: Any) -> Api:
    """The real Flask app (test client) over SecantusDB and Redis, with a live Celery worker."""
    return Api(app_client, fresh_db)


@pytest.fixture(scope="session")
def provider_sim_port() -> int:
    """The port the payout provider simulator listens on when a test starts it (tests/api/test_payouts.py)."""
    from devstack.supervisor import free_port

    return free_port()


@pytest.fixture(scope="session")
def stack_env(stack_env: dict[str, str], provider_sim_port: int) -> dict[str, str]:
    """The API suites' processes know the payout provider: the simulator on a port reserved for
    the session, started only by the tests that need it (elsewhere submissions find it down)."""
    return {**stack_env, "PAYOUT_PROVIDER_URL": f"http://127.0.0.1:{provider_sim_port}"}
