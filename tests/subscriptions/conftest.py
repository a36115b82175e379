"""Fixtures of the subscription suite: a fresh database with a live worker."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def db(fresh_db: Any, session_worker: Any) -> Iterator[Any]:
    """A migrated empty database while the shared worker consumes every queue."""
    yield fresh_db
