"""Celery application: ``celery -A workers worker|beat|flower``.

``workers.app`` is built on first access (by Celery's ``-A`` lookup), from the
settings read at that moment; importing the package builds nothing.
"""

from typing import Any

from workers.celery_app import create_celery, get_celery, worker_app

__all__ = ["app", "create_celery", "get_celery", "worker_app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        return worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
