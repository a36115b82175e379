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


def wallet_card(db: Database, user_id: str, partitions: int) -> WalletCard | None:
    user = db.users.find_one({"_id": user_id}, {"passwordHash": 0})
    found = balance(db, user_id, partitions) if user is not None else None
    if user is None or found is None:
        return None
    return WalletCard(user, found, held_amount(db, user_id))


def operator_trail(db: Database, target_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The operator chain's entries about ``target_id`` (a wallet, a delivery, a payout), newest first."""
    entries = list(db.auditlogs.find({"target.id": target_id}, hint="operator_target").limit(TRAIL_READ))
    entries.sort(key=lambda e: e["seq"], reverse=True)
    return entries[:limit]


def audit_record(db: Database, job_id: str) -> dict[str, Any] | None:
    """Where a terminal job is vouched for: its block's partition, seq and hash, and its record."""
    found = audit_entry_of(db, job_id)
    if found is None:
        return None
    entry, record = found
    return {"partition": entry["partition"], "seq": entry["seq"], "hash": entry["hash"],
            "createdAt": entry["createdAt"], "record": record}


def audit_trail(db: Database, job_ids: list[str], wallet_id: str) -> list[dict[str, Any]]:
    """The audit records of ``job_ids`` (one page of a wallet's ledger) with that wallet's balances."""
    rows = []
    for job_id in job_ids:
        found = audit_record(db, job_id)
        if found is None:
            continue
        moved = [b for b in found["record"].get("balances", []) if b["walletId"] == wallet_id]
        rows.append({**found, "jobId": job_id, "balances": moved})
    return rows
