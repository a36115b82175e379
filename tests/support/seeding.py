"""Users and wallets written straight into MongoDB, for tests that are not about registering.

Registering through the API costs an argon2 hash per user, which would dominate a
run that needs 200 users on 2 cores. Seeded users are real documents of the shape
``services.users`` writes, and :func:`seed_users` mints the tokens ``/api/auth/login``
would issue; the API suites register through the API instead (tests/api/helpers.py).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo.database import Database

from api.auth import issue_token
from infra.config import get_settings
from ledger.operations import partition_of
from ledger.timeutil import utcnow

PASSWORD = "correct-horse-9"

_hash_lock = threading.Lock()
_password_hash: str | None = None


def password_hash() -> str:
    """One argon2 hash of :data:`PASSWORD` shared by every seeded user (the cost is paid once)."""
    global _password_hash
    with _hash_lock:
        if _password_hash is None:
            from argon2 import PasswordHasher
            _password_hash = PasswordHasher().hash(PASSWORD)
        return _password_hash


@dataclass(frozen=True)
class User:
    id: str
    email: str
    role: str
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def partitions() -> int:
    return get_settings().ledger_partitions


def new_id(partition: int | None = None, of: int | None = None) -> str:
    """A fresh 24-hex id, optionally one whose wallet falls in ``partition`` (of ``of``
    partitions, the settings' count by default)."""
    while True:
        candidate = str(ObjectId())
        if partition is None or partition_of(candidate, of or partitions()) == partition:
            return candidate


def _documents(user_id: str, email: str, role: str, password: str) -> tuple[dict[str, Any], dict[str, Any]]:
    now = utcnow()
    user = {"_id": user_id, "email": email, "passwordHash": password, "role": role, "displayName": None,
            "accountStatus": "active", "createdAt": now}
    wallet = {"_id": user_id, "userId": user_id, "balance": 0, "status": "active", "version": 0,
              "createdAt": now, "lastTransactionAt": None}
    return user, wallet


def seed_users(db: Database, n: int, role: str = "free", prefix: str = "u") -> list[User]:
    """Insert ``n`` users who can log in with :data:`PASSWORD`, with empty wallets and tokens."""
    settings = get_settings()
    run = uuid.uuid4().hex[:8]
    docs, out = [], []
    for i in range(n):
        uid = str(ObjectId())
        email = f"{prefix}{i}-{run}@example.com"
        docs.append(_documents(uid, email, role, password_hash()))
        out.append(User(uid, email, role, issue_token(settings, uid, role)[0]))
    if docs:
        db.users.insert_many([u for u, _ in docs])
        db.wallets.insert_many([w for _, w in docs])
    return out


def add_users(db: Database, count: int, partition: int | None = None, role: str = "free",
              of: int | None = None) -> list[str]:
    """``count`` users (no password, no token) with empty wallets, optionally all in ``partition``
    (of ``of`` partitions, the settings' count by default)."""
    docs = [_documents(i, f"{i}@example.com", role, "x") for i in (new_id(partition, of) for _ in range(count))]
    if docs:
        db.users.insert_many([u for u, _ in docs])
        db.wallets.insert_many([w for _, w in docs])
    return [u["_id"] for u, _ in docs]


def add_user(db: Database, partition: int | None = None, role: str = "free") -> str:
    return add_users(db, 1, partition, role)[0]
