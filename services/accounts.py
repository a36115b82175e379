"""The web tier's way in to accounts: registration, login, profile, stored roles, and
the operator's role changes and wallet freezes.

The mechanics (password hashing, audited changes) are in ``services/users.py``, whose
functions take a ``db`` (tests, the seeder, migrations pass theirs); these resolve
this process's store, so ``api/`` never touches MongoDB (``tests/unit/test_layers.py``).
"""

from __future__ import annotations

from typing import Any

from pymongo.database import Database

from infra.config import Settings
from ledger.states import Role, WalletStatus
from services import operator_audit, users


def register(db: Database, email: str, password: str, display_name: str | None = None, *,
             settings: Settings | None = None) -> dict[str, Any]:
    """A new ``free`` account and its wallet (``users.EmailTaken``, ``users.HashingBusy``)."""
    return users.create_user(db, email, password, display_name=display_name, settings=settings)


def login(db: Database, email: str, password: str, *, settings: Settings | None = None) -> dict[str, Any] | None:
    """The active account with this e-mail and password, or None (``users.HashingBusy``)."""
    return users.authenticate(db, email, password, settings=settings)


def profile(db: Database, user_id: str) -> dict[str, Any] | None:
    return users.get_user(db, user_id)


def stored_role(db: Database, user_id: str) -> Role | None:
    """The role stored for ``user_id``, or None (no such user, account not active, unknown role)."""
    user = db.users.find_one({"_id": user_id}, {"role": 1, "accountStatus": 1})
    if user is None or user.get("accountStatus", users.AccountStatus.ACTIVE) != users.AccountStatus.ACTIVE:
        return None
    try:
        return Role(user.get("role"))
    except ValueError:
        return None


def change_role(db: Database, user_id: str, role: Role, actor: dict[str, str],
                request_id: str | None) -> dict[str, Any] | None:
    """An operator's audited role change; the user, or None for no such user."""
    return users.change_role(db, user_id, role, actor, request_id)


def set_wallet_status(db: Database, user_id: str, status: WalletStatus, actor: dict[str, str], request_id: str | None,
                      *, submission: operator_audit.Submission | None = None) -> dict[str, Any] | None:
    """An operator's audited freeze or unfreeze; the wallet, or None for no such wallet."""
    return users.change_wallet_status(db, user_id, status, actor, request_id, submission=submission)


def ensure_admin(db: Database, email: str, password: str, actor: dict[str, str]) -> tuple[str, bool]:
    """Create an admin, or promote the existing account (password unchanged): (user id, created)."""
    existing = db.users.find_one({"email": users.normalise_email(email)})
    if existing:
        users.change_role(db, existing["_id"], Role.ADMIN, actor, None)
        return existing["_id"], False
    user = users.create_user(db, email, password, role=Role.ADMIN)
    return user["_id"], True
