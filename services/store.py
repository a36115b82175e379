"""The service layer's handle on MongoDB, the only one the web tier reaches through.

``api/`` never imports ``infra.mongo`` or ``pymongo`` (``tests/unit/test_layers.py``):
its routes call ``services`` functions, which take an optional ``db`` (tests and the
bench pass their own) and otherwise use this process's client. ``StoreError`` is the
one store exception the API maps to an answer (503 / 500, ``api/errors.py``).
"""

from __future__ import annotations

from pymongo.database import Database
from pymongo.errors import PyMongoError

StoreError = PyMongoError


def database(db: Database | None = None) -> Database:
    """``db`` when given, else this process's database (connects lazily, after fork)."""
    if db is not None:
        return db
    from infra.mongo import get_db

    return get_db()


def ping() -> str:
    """One round trip to the store (readiness)."""
    from infra.mongo import get_client

    get_client().admin.command("ping")
    return "ping ok"
