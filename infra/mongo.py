"""One MongoDB client per process, created lazily after fork.

PyMongo clients are not fork-safe, so nothing connects at import time: gunicorn's
``post_fork`` and Celery's ``worker_process_init`` call :func:`reset_client`, and the
first :func:`get_db` in the child connects.
"""

from __future__ import annotations

import os
import threading

from pymongo import MongoClient
from pymongo.database import Database

from infra.config import Settings, get_settings

_lock = threading.Lock()
_client: MongoClient | None = None
_pid: int | None = None
_app_name = "purser"


def set_app_name(name: str) -> None:
    """Name this process's connections (server logs, ``currentOp``, fail points scoped by
    ``appName``) and drop the current client so the next :func:`get_db` uses the name."""
    global _app_name
    _app_name = name
    reset_client()


def write_concern(settings: Settings) -> dict[str, object]:
    """The client's write concern: in production an acknowledged write (an accepted job, a
    committed settlement batch, a webhook's top-up) is on a majority of the replica set
    and in its journal, so a 202 survives the primary's crash and a failover; the embedded
    store of development and tests is one node, where the default (w: 1) is the same thing."""
    return {"w": "majority", "journal": True} if settings.is_production else {}


def get_client() -> MongoClient:
    global _client, _pid
    if _client is not None and _pid == os.getpid():
        return _client
    with _lock:
        if _client is None or _pid != os.getpid():
            settings = get_settings()
            _client = MongoClient(
                settings.mongodb_uri,
                tz_aware=True,
                connect=False,
                serverSelectionTimeoutMS=5000,
                connectTimeoutMS=3000,
                appname=_app_name,
                **write_concern(settings),
            )
            _pid = os.getpid()
    return _client


def get_db() -> Database:
    return get_client()[get_settings().mongodb_db]


def reset_client() -> None:
    """Drop the inherited client without closing the parent's sockets."""
    global _client, _pid
    with _lock:
        _client = None
        _pid = None


def close_client() -> None:
    global _client, _pid
    with _lock:
        if _client is not None and _pid == os.getpid():
            _client.close()
        _client = None
        _pid = None
