"""Operator console sessions, kept server-side in Redis so that logging out really ends them.

The browser holds only a random token (the cookie); Redis holds, under the token's
SHA-256 (a dump of Redis yields no usable cookie), who logged in, when, and the
session's CSRF token. A session ends at logout, after ``idle`` seconds without a
request (the key's TTL, renewed by each request) and ``max_age`` seconds after login
whatever the activity.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

KEY_PREFIX = "purser:console:session:"
TOKEN_BYTES = 32


@dataclass(frozen=True)
class ConsoleSession:
    user_id: str
    csrf: str  # the synchronizer token every form of this session carries
    created_at: float  # epoch seconds


def _key(token: str) -> str:
    return KEY_PREFIX + hashlib.sha256(token.encode()).hexdigest()


def open_session(redis: Any, user_id: str, idle: int, *, now: float | None = None) -> tuple[str, ConsoleSession]:
    """A new session for ``user_id``: (the cookie's token, the session)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    session = ConsoleSession(user_id, secrets.token_urlsafe(TOKEN_BYTES), now if now is not None else time.time())
    redis.set(_key(token), json.dumps(session.__dict__), ex=idle)
    return token, session


def load_session(redis: Any, token: str, idle: int, max_age: int, *,
                 now: float | None = None) -> ConsoleSession | None:
    """The live session of ``token`` (its idle time restarts), or None: unknown, idle or too old."""
    if not token or len(token) > 2 * TOKEN_BYTES:
        return None
    key = _key(token)
    raw = redis.get(key)
    if raw is None:
        return None
    data = json.loads(raw)
    session = ConsoleSession(data["user_id"], data["csrf"], float(data["created_at"]))
    if (now if now is not None else time.time()) - session.created_at >= max_age:
        redis.delete(key)
        return None
    redis.expire(key, idle)
    return session


def close_session(redis: Any, token: str) -> None:
    """Forget the session of ``token`` (logout, a demoted operator)."""
    if token:
        redis.delete(_key(token))
