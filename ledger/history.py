"""Balances over time, as pure folds over what settlement already wrote.

A wallet's balance at an instant is the sum of its ledger entries dated at or before
it (a credit settled by another partition counts from its own date, like the live
``balance + incoming``); ``held`` is what its open payouts hold; ``debt`` is the part
of a negative balance a chargeback left. Checkpoints (``services/checkpoints.py``)
store these sums per wallet at window ends, folded from the audit blocks; an answer
adds the few entries after the nearest checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.money import PAYOUTS_IN_FLIGHT
from ledger.states import PayoutStatus

# A payout event that ends its hold (the in-flight coins leave for the bank or come back).
RELEASING = (PayoutStatus.PAID.value, PayoutStatus.FAILED.value, PayoutStatus.EXPIRED.value)


@dataclass
class Totals:
    """A wallet's running sums: ledger balance and coins held by open payouts."""

    balance: int = 0
    held: int = 0

    @property
    def debt(self) -> int:
        return max(0, -self.balance)

    def add(self, balance: int = 0, held: int = 0) -> None:
        self.balance += balance
        self.held += held


def held_owner(record: Mapping[str, Any]) -> str | None:
    """Whose payout an audit record's in-flight entry belongs to.

    A hold debits its user; a post or void names the user only as the job's owner
    (the post's entries are in-flight -> external funding).
    """
    if record.get("type") == "payout":
        return next((e["walletId"] for e in record.get("entries", ()) if e["amount"] < 0), None)
    if record.get("type") == "payout_event":
        return (record.get("actor") or {}).get("id")
    return None


def fold_record(record: Mapping[str, Any], into: dict[str, Totals]) -> None:
    """Add one settled audit record's entries (and held changes) to per-wallet totals."""
    if record.get("outcome") != "settled":
        return
    for entry in record.get("entries", ()):
        into.setdefault(entry["walletId"], Totals()).add(balance=entry["amount"])
    owner = held_owner(record)
    if owner is not None:
        moved = sum(e["amount"] for e in record.get("entries", ()) if e["walletId"] == PAYOUTS_IN_FLIGHT)
        if moved:
            into.setdefault(owner, Totals()).add(held=moved)


def entries_sum(txs: Iterable[Mapping[str, Any]], wallet_id: str) -> int:
    """What ledger transactions moved for ``wallet_id``."""
    return sum(e["amount"] for tx in txs for e in tx["entries"] if e["walletId"] == wallet_id)


def held_change(payout: Mapping[str, Any], after: datetime | None, until: datetime) -> int:
    """How a payout changed its user's held coins in ``(after, until]``.

    Its hold counts from ``createdAt`` (the hold's settlement date), its release from
    the event that paid, failed or expired it (the event's settlement date).
    """
    def inside(moment: datetime) -> bool:
        return (after is None or moment > after) and moment <= until

    change = payout["amount"] if inside(payout["createdAt"]) else 0
    for event in payout.get("events", ()):
        if event.get("status") in RELEASING and inside(event["at"]):
            change -= payout["amount"]
    return change


def platform_increments(record: Mapping[str, Any]) -> dict[str, int]:
    """The ``$inc`` of one settled record on its month's platform totals, by kind.

    ``gross`` is what the paying side moved; ``revenue``/``processing`` the platform's
    shares (negative when a refund gives them back); ``inFlight`` and ``funding`` the
    payout and provider sides.
    """
    from ledger.money import EXTERNAL_FUNDING, PLATFORM_PROCESSING, PLATFORM_REVENUE, is_system_wallet

    if record.get("outcome") != "settled":
        return {}
    kind = record.get("type") or "unknown"
    by_wallet: dict[str, int] = {}
    for e in record.get("entries", ()):
        by_wallet[e["walletId"]] = by_wallet.get(e["walletId"], 0) + e["amount"]
    users = sum(a for w, a in by_wallet.items() if not is_system_wallet(w))
    gross = sum(a for a in by_wallet.values() if a > 0)
    inc = {f"{kind}.count": 1, f"{kind}.gross": gross, f"{kind}.users": users,
           f"{kind}.revenue": by_wallet.get(PLATFORM_REVENUE, 0),
           f"{kind}.processing": by_wallet.get(PLATFORM_PROCESSING, 0),
           f"{kind}.inFlight": by_wallet.get(PAYOUTS_IN_FLIGHT, 0),
           f"{kind}.funding": by_wallet.get(EXTERNAL_FUNDING, 0)}
    return {k: v for k, v in inc.items() if v or k.endswith(".count")}
