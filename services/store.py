"""The service layer's handle on MongoDB, the only one the web tier reaches through.

``api/`` never imports ``infra.mongo`` or ``pymongo`` (``tests/unit/test_layers.py``):
its routes call ``services`` functions, each of which takes the store handle ``db`` as its
first positional argument, always explicit: routes pass :func:`process_db`, tasks pass
``infra.mongo.get_db()``, tests and the bench pass their own. ``StoreError`` is the
one store exception the API maps to an answer (503 / 500, ``api/errors.py``).
"""

from __future__ import annotations

from pymongo.database import Database
from pymongo.errors import PyMongoError

StoreError = PyMongoError


def process_db() -> Database:
    """This process's database (connects lazily, after fork): the web tier's one way to the store.

    ``api/`` may not import ``infra.mongo``; its routes call this and pass the handle to
    the services function explicitly (tasks call ``infra.mongo.get_db()`` themselves).
    """
    from infra.mongo import get_db

    return get_db()


def ping() -> str:
    """One round trip to the store (readiness)."""
    from infra.mongo import get_client

    get_client().admin.command("ping")
    return "ping ok"
