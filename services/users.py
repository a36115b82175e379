"""Users, their wallets, roles and credentials.

Passwords are argon2id with the parameters of the configuration (``ARGON2_*``,
OWASP's minimum by default: 19 MiB, 2 passes, 1 lane). A hash made with other
parameters is re-made at the next successful login. Every hash and verification
takes one of ``PASSWORD_HASH_CONCURRENCY`` slots of this process, so a login
burst queues for a slot instead of allocating the hash memory once per request
thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Any

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from bson import ObjectId
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from infra.config import Settings, get_settings
from ledger.states import Role, WalletStatus
from ledger.timeutil import utcnow
from services import operator_audit

log = logging.getLogger("purser.users")

# Longest a request waits for a hashing slot before it is answered 503 (busy).
HASH_WAIT_SECONDS = 10.0
_DUMMY_PASSWORD = "purser-dummy-password"

_lock = threading.Lock()
_hashers: dict[tuple[int, int, int], tuple[PasswordHasher, str]] = {}
_slots: tuple[int, threading.BoundedSemaphore] | None = None


class AccountStatus(StrEnum):
    """``users.accountStatus``: only active accounts log in or hold a role (none other is written yet)."""

    ACTIVE = "active"


class EmailTaken(Exception):
    pass


class HashingBusy(Exception):
    """No password-hashing slot freed within :data:`HASH_WAIT_SECONDS`."""


def _params(settings: Settings) -> tuple[int, int, int]:
    return settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism


def _hasher_and_dummy(settings: Settings) -> tuple[PasswordHasher, str]:
    key = _params(settings)
    found = _hashers.get(key)
    if found is None:
        with _lock:
            found = _hashers.get(key)
            if found is None:
                memory, time_cost, parallelism = key
                argon = PasswordHasher(time_cost=time_cost, memory_cost=memory, parallelism=parallelism,
                                       type=Type.ID)
                # Verifying against a fixed hash of the same parameters for unknown emails keeps
                # the timing of a wrong email and a wrong password alike (no account discovery).
                found = (argon, argon.hash(_DUMMY_PASSWORD))
                _hashers[key] = found
    return found


def hasher(settings: Settings | None = None) -> PasswordHasher:
    """The argon2id hasher of the configured parameters (one per parameter set)."""
    return _hasher_and_dummy(settings or get_settings())[0]


def _semaphore(size: int) -> threading.BoundedSemaphore:
    global _slots
    slots = _slots
    if slots is None or slots[0] != size:
        with _lock:
            if _slots is None or _slots[0] != size:
                _slots = (size, threading.BoundedSemaphore(size))
            slots = _slots
    return slots[1]


@contextmanager
def hashing_slot(settings: Settings | None = None, wait: float | None = None) -> Iterator[None]:
    """Hold one of the process's ``PASSWORD_HASH_CONCURRENCY`` slots.

    Raises :class:`HashingBusy` when none frees within ``wait`` seconds
    (default :data:`HASH_WAIT_SECONDS`).
    """
    settings = settings or get_settings()
    semaphore = _semaphore(settings.password_hash_concurrency)
    if not semaphore.acquire(timeout=HASH_WAIT_SECONDS if wait is None else wait):
        raise HashingBusy()
    try:
        yield
    finally:
        semaphore.release()


def hash_password(password: str, settings: Settings | None = None) -> str:
    """An argon2id hash of ``password`` with the configured parameters (takes a hashing slot)."""
    settings = settings or get_settings()
    with hashing_slot(settings):
        return hasher(settings).hash(password)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def create_user(db: Database, email: str, password: str, *, role: str = Role.FREE,
                display_name: str | None = None, now: datetime | None = None,
                settings: Settings | None = None) -> dict[str, Any]:
    """Create the user and the wallet; refuse a taken email (ValueError for an unknown role)."""
    role = Role(role)
    now = now or utcnow()
    user_id = str(ObjectId())
    user = {"_id": user_id, "email": normalise_email(email), "passwordHash": hash_password(password, settings),
            "role": role, "displayName": display_name, "accountStatus": AccountStatus.ACTIVE, "createdAt": now}
    try:
        db.users.insert_one(user)
    except DuplicateKeyError:
        raise EmailTaken(email) from None
    # The wallet id is the user id: one wallet per user, partitioned by it.
    db.wallets.insert_one({"_id": user_id, "userId": user_id, "balance": 0, "status": WalletStatus.ACTIVE,
                           "version": 0, "createdAt": now, "lastTransactionAt": None})
    return user


def authenticate(db: Database, email: str, password: str,
                 settings: Settings | None = None) -> dict[str, Any] | None:
    """The active user with this email and password, or None; re-hashes an outdated hash."""
    settings = settings or get_settings()
    argon, dummy = _hasher_and_dummy(settings)
    user = db.users.find_one({"email": normalise_email(email), "accountStatus": AccountStatus.ACTIVE})
    stored = user["passwordHash"] if user else dummy
    rehashed: str | None = None
    with hashing_slot(settings):
        try:
            argon.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None:
            return None
        if argon.check_needs_rehash(stored):
            rehashed = argon.hash(password)
    if rehashed is not None:
        _store_rehash(db, user, stored, rehashed)
    return user


def _store_rehash(db: Database, user: dict[str, Any], old: str, new: str) -> None:
    # Conditional on the old hash: a password changed meanwhile is not overwritten.
    try:
        db.users.update_one({"_id": user["_id"], "passwordHash": old}, {"$set": {"passwordHash": new}})
        user["passwordHash"] = new
    except PyMongoError as exc:  # the login itself succeeded; the next one retries
        log.warning("could not store a re-hashed password", extra={"error": type(exc).__name__})


def get_user(db: Database, user_id: str) -> dict[str, Any] | None:
    return db.users.find_one({"_id": user_id})


def set_role(db: Database, user_id: str, role: str,
             session: ClientSession | None = None) -> dict[str, Any] | None:
    """Set the stored role (unaudited: operators go through :func:`change_role`)."""
    role = Role(role)
    res = db.users.update_one({"_id": user_id}, {"$set": {"role": role}}, session=session)
    return db.users.find_one({"_id": user_id}, session=session) if res.matched_count else None


def set_wallet_status(db: Database, user_id: str, status: str,
                      session: ClientSession | None = None) -> dict[str, Any] | None:
    """Freeze or unfreeze a user's wallet (unaudited: operators go through :func:`change_wallet_status`)."""
    res = db.wallets.update_one({"_id": user_id, "userId": user_id}, {"$set": {"status": status}},
                                session=session)
    return db.wallets.find_one({"_id": user_id}, session=session) if res.matched_count else None


def change_role(db: Database, user_id: str, role: str, actor: dict[str, str],
                request_id: str | None) -> dict[str, Any] | None:
    """An operator's role change, applied and audited in one transaction; None for no such user."""
    role = Role(role)

    def apply(session: ClientSession) -> operator_audit.Change | None:
        before = db.users.find_one({"_id": user_id}, {"role": 1}, session=session)
        if before is None:
            return None
        user = set_role(db, user_id, role, session)
        return operator_audit.Change({"role": before["role"]}, {"role": role}, user)

    done = operator_audit.record(db, "user.role", actor, {"type": "user", "id": user_id}, request_id, apply)
    return None if done is None else done[0].result


def change_wallet_status(db: Database, user_id: str, status: str, actor: dict[str, str],
                         request_id: str | None, *,
                         submission: operator_audit.Submission | None = None) -> dict[str, Any] | None:
    """An operator's freeze/unfreeze, applied and audited in one transaction; None for no such wallet
    (``operator_audit.AlreadyDone`` when the console form's ``submission`` was already applied)."""
    status = WalletStatus(status)
    action = "wallet.freeze" if status == WalletStatus.FROZEN else "wallet.unfreeze"

    def apply(session: ClientSession) -> operator_audit.Change | None:
        before = db.wallets.find_one({"_id": user_id, "userId": user_id}, {"status": 1}, session=session)
        if before is None:
            return None
        wallet = set_wallet_status(db, user_id, status, session)
        return operator_audit.Change({"status": before["status"]}, {"status": status}, wallet)

    done = operator_audit.record(db, action, actor, {"type": "wallet", "id": user_id}, request_id, apply,
                                 submission=submission)
    return None if done is None else done[0].result


def user_view(user: dict[str, Any]) -> dict[str, Any]:
    return {"userId": user["_id"], "email": user["email"], "role": user["role"]}
