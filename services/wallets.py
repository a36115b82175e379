"""Wallet reads for the web tier: existence checks at accept time and the balance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pymongo.database import Database

from ledger.money import SYSTEM_WALLETS
from ledger.routing import bucket_id
from ledger.states import WalletStatus
from services.known_facts import KnownFacts
from services.queries import incoming_credits

# Credits are applied once per settlement batch (tens of ms apart at most), so a few
# tries find a quiet moment; each try is three point/range reads.
_CONSISTENT_READ_TRIES = 8


class ConsistentReadError(RuntimeError):
    """The wallet kept changing while its balance was read (retryable)."""


@dataclass(frozen=True)
class Balance:
    wallet_id: str
    balance: int  # spendable now
    incoming: int  # settled for this wallet by another partition, applied by its owner next (sub-second)
    status: WalletStatus


# A user who exists keeps existing (users are never deleted; freezing is decided at
# settlement), so the accept path reads the store only for a user it has not seen.
KNOWN_USERS_MAX = 100_000
_known_users: KnownFacts[bool] = KnownFacts("known_users", KNOWN_USERS_MAX)


def user_exists(db: Database, user_id: str) -> bool:
    """Whether ``user_id`` is a user (one with its own wallet), at most one read per process."""
    def read() -> bool | None:  # None: not a fact to remember
        return True if user_wallet_status(db, user_id) is not None else None

    return _known_users.get(user_id, read) is True


def forget_known_users() -> None:
    """Empty the cache of known users (tests that drop the database)."""
    _known_users.clear()


def user_wallet_status(db: Database, user_id: str) -> WalletStatus | None:
    """The status of ``user_id``'s own wallet, or None when there is no such user (system wallets included)."""
    wallet = db.wallets.find_one({"_id": user_id, "userId": user_id}, {"status": 1})
    return None if wallet is None else WalletStatus(wallet.get("status", WalletStatus.ACTIVE))


def wallet_created(db: Database, user_id: str) -> tuple[datetime | None, WalletStatus | None]:
    """When ``user_id``'s wallet was created and its status; ``(None, None)`` without one."""
    wallet = db.wallets.find_one({"_id": user_id, "userId": user_id}, {"status": 1, "createdAt": 1})
    if wallet is None:
        return None, None
    return wallet.get("createdAt"), WalletStatus(wallet.get("status", WalletStatus.ACTIVE))


def balance(db: Database, user_id: str, partitions: int) -> Balance | None:
    """``user_id``'s balance and credits still in flight to it, or None without a wallet.

    The two live in different documents and the owner partition moves a credit from one
    to the other in one transaction that also bumps the wallet's ``version``. Reading the
    wallet on both sides of the credits read, and retrying when its version moved, gives a
    pair from one instant: an applied credit never shows in both (a client summing them
    would see money twice; the Try-it CI run did) nor in neither.
    """
    wallet = db.wallets.find_one({"_id": user_id})
    for _ in range(_CONSISTENT_READ_TRIES):
        if wallet is None:
            return None
        incoming = incoming_credits(db, user_id, partitions)
        again = db.wallets.find_one({"_id": user_id})
        if again is not None and again.get("version") == wallet.get("version"):
            break
        wallet = again
    else:
        # A wallet applying credits on every read for this long is not a state a
        # balance view can wait out; say so loudly rather than answer a torn pair.
        raise ConsistentReadError(user_id)
    return Balance(wallet["_id"], wallet["balance"], incoming,
                   WalletStatus(wallet.get("status", WalletStatus.ACTIVE)))


def platform_balances(db: Database, partitions: int) -> dict[str, int]:
    """Each system wallet's figure: the sum of its per-partition buckets.

    Point reads by ``_id`` (partitions x system wallets documents), so the cost does
    not grow with users or history; reconcile's aggregate sums the same documents.
    """
    owner = {bucket_id(name, p): name for name in SYSTEM_WALLETS for p in range(partitions)}
    totals = dict.fromkeys(SYSTEM_WALLETS, 0)
    for doc in db.wallets.find({"_id": {"$in": list(owner)}}, {"balance": 1}):
        totals[owner[doc["_id"]]] += doc["balance"]
    return totals
