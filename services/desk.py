"""Reads of the operator console: one wallet's figures and audit trail, one job's audit record.

Every read is a point read or a short index range: the wallet and its credits in
flight (``services.wallets.balance``), its open payouts (``payouts.owner_recent``),
the audit block of each job on the page shown (``auditlogs.partition_seq_unique``)
and the operator chain's entries about it (``auditlogs.operator_target``, migration 0007).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from services.payouts import held_amount
from services.queries import audit_entry_of
from services.store import database
from services.wallets import Balance, balance

TRAIL_READ = 200  # operator entries read about one target (sorted here, newest shown)


@dataclass(frozen=True)
class WalletCard:
    user: dict[str, Any]
    balance: Balance
    held: int  # in open payouts (pending or submitted)

    @property
    def debt(self) -> int:
        """What a chargeback left owing: later credits repay it first."""
        return max(0, -self.balance.balance)


def wallet_card(user_id: str, partitions: int, *, db: Database | None = None) -> WalletCard | None:
    db = database(db)
    user = db.users.find_one({"_id": user_id}, {"passwordHash": 0})
    found = balance(user_id, partitions, db=db) if user is not None else None
    if user is None or found is None:
        return None
    return WalletCard(user, found, held_amount(user_id, db=db))


def operator_trail(target_id: str, limit: int = 20, *, db: Database | None = None) -> list[dict[str, Any]]:
    """The operator chain's entries about ``target_id`` (a wallet, a delivery, a payout), newest first."""
    entries = list(database(db).auditlogs.find({"target.id": target_id}, hint="operator_target").limit(TRAIL_READ))
    entries.sort(key=lambda e: e["seq"], reverse=True)
    return entries[:limit]


def audit_record(job_id: str, *, db: Database | None = None) -> dict[str, Any] | None:
    """Where a terminal job is vouched for: its block's partition, seq and hash, and its record."""
    found = audit_entry_of(database(db), job_id)
    if found is None:
        return None
    entry, record = found
    return {"partition": entry["partition"], "seq": entry["seq"], "hash": entry["hash"],
            "createdAt": entry["createdAt"], "record": record}


def audit_trail(job_ids: list[str], wallet_id: str, *, db: Database | None = None) -> list[dict[str, Any]]:
    """The audit records of ``job_ids`` (one page of a wallet's ledger) with that wallet's balances."""
    db = database(db)
    rows = []
    for job_id in job_ids:
        found = audit_record(job_id, db=db)
        if found is None:
            continue
        moved = [b for b in found["record"].get("balances", []) if b["walletId"] == wallet_id]
        rows.append({**found, "jobId": job_id, "balances": moved})
    return rows
