"""Users, their wallets, roles and credentials."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from bson import ObjectId
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from ledger.timeutil import utcnow

ROLES = ("free", "premium", "creator", "admin")
_hasher = PasswordHasher()  # argon2id with the library's current defaults
# Verifying against a fixed hash for unknown emails keeps the timing of a wrong
# email and a wrong password alike, so login does not reveal which emails exist.
_DUMMY_HASH = _hasher.hash("purser-dummy-password")


class EmailTaken(Exception):
    pass


def normalise_email(email: str) -> str:
    return email.strip().lower()


def create_user(db: Database, email: str, password: str, *, role: str = "free",
                display_name: str | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Create the user and the wallet; refuse a taken email."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    now = now or utcnow()
    user_id = str(ObjectId())
    user = {"_id": user_id, "email": normalise_email(email), "passwordHash": _hasher.hash(password),
            "role": role, "displayName": display_name, "accountStatus": "active", "createdAt": now}
    try:
        db.users.insert_one(user)
    except DuplicateKeyError:
        raise EmailTaken(email) from None
    # The wallet id is the user id: one wallet per user, partitioned by it.
    db.wallets.insert_one({"_id": user_id, "userId": user_id, "balance": 0, "status": "active",
                           "version": 0, "createdAt": now, "lastTransactionAt": None})
    return user


def authenticate(db: Database, email: str, password: str) -> dict[str, Any] | None:
    user = db.users.find_one({"email": normalise_email(email), "accountStatus": "active"})
    try:
        _hasher.verify(user["passwordHash"] if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return None
    return user


def get_user(db: Database, user_id: str) -> dict[str, Any] | None:
    return db.users.find_one({"_id": user_id})


def set_role(db: Database, user_id: str, role: str) -> dict[str, Any] | None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    res = db.users.update_one({"_id": user_id}, {"$set": {"role": role}})
    return get_user(db, user_id) if res.matched_count else None


def set_wallet_status(db: Database, user_id: str, status: str) -> dict[str, Any] | None:
    """Freeze or unfreeze a user's wallet (settlement refuses frozen wallets)."""
    res = db.wallets.update_one({"_id": user_id, "userId": user_id}, {"$set": {"status": status}})
    return db.wallets.find_one({"_id": user_id}) if res.matched_count else None


def user_view(user: dict[str, Any]) -> dict[str, Any]:
    return {"userId": user["_id"], "email": user["email"], "role": user["role"]}
