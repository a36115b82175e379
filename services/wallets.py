"""Wallet reads for the web tier: existence checks at accept time and the balance."""

from __future__ import annotations

from dataclasses import dataclass

from pymongo.database import Database

from ledger.states import WalletStatus
from services.queries import incoming_credits
from services.store import database


@dataclass(frozen=True)
class Balance:
    wallet_id: str
    balance: int  # spendable now
    incoming: int  # settled for this wallet by another partition, applied by its owner next (sub-second)
    status: WalletStatus


def user_wallet_status(user_id: str, *, db: Database | None = None) -> WalletStatus | None:
    """The status of ``user_id``'s own wallet, or None when there is no such user (system wallets included)."""
    wallet = database(db).wallets.find_one({"_id": user_id, "userId": user_id}, {"status": 1})
    return None if wallet is None else WalletStatus(wallet.get("status", WalletStatus.ACTIVE))


def balance(user_id: str, partitions: int, *, db: Database | None = None) -> Balance | None:
    """``user_id``'s balance and credits still in flight to it, or None without a wallet."""
    db = database(db)
    # Credits first: one applied between the two reads then shows in the balance (and,
    # at worst, also in incoming for an instant), never in neither.
    incoming = incoming_credits(db, user_id, partitions)
    wallet = db.wallets.find_one({"_id": user_id})
    if wallet is None:
        return None
    return Balance(wallet["_id"], wallet["balance"], incoming,
                   WalletStatus(wallet.get("status", WalletStatus.ACTIVE)))
