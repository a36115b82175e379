"""Per-request / per-task context that every log line carries.

Context variables work for threads (gunicorn gthread) and for Celery's prefork
children alike; a filter copies them onto each log record.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("purser_log_context", default={})  # noqa: B039

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{8,128}$")


def current() -> dict[str, Any]:
    return _context.get()


def request_id() -> str | None:
    return _context.get().get("requestId")


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add fields to the log context for the duration of the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> contextvars.Token:
    return _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


def reset(token: contextvars.Token) -> None:
    _context.reset(token)


def clean_request_id(raw: str | None) -> str:
    """Keep a caller's id when well-formed (8-128 of [A-Za-z0-9._-]), else make one."""
    if raw and REQUEST_ID_RE.match(raw):
        return raw
    return str(uuid.uuid4())
