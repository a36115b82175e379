"""A task that fails on purpose, for checking error reporting (loaded only outside production)."""

from __future__ import annotations

import logging

from workers.celery_app import task

log = logging.getLogger("purser.debug")


class DeliberateTaskError(RuntimeError):
    """Raised on purpose by ``debug.boom``."""


@task(name="debug.boom", acks_late=True, ignore_result=True)
def boom(message: str = "deliberate task error", detail: dict | None = None) -> None:
    # Logged first so the report also carries a breadcrumb with the same secrets.
    log.info("debug.boom about to fail", extra={"detail": detail or {}})
    raise DeliberateTaskError(message)
