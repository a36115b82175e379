"""The checks every decider shares: a refusal, a user's wallet, funds, a revenue split."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from ledger.effects import Effect
from ledger.money import bucket_may_go_negative, is_system_wallet
from ledger.outcomes import INSUFFICIENT_FUNDS, WALLET_FROZEN, WALLET_NOT_FOUND, Entry, Snapshot, WalletState
from ledger.splits import CREATOR, rule_for, split
from ledger.states import FROZEN

# A decider: (job_id, op, state, now) -> (entries, result, effects); raising Refused fails the job.
Decided = tuple[list[Entry], dict[str, Any], list[Effect]]
Decider = Callable[[str, Any, Snapshot, datetime], Decided]


class Refused(Exception):
    """The rules refuse the operation: the job fails with ``code`` (and still applies ``effects``)."""

    def __init__(self, code: str, effects: tuple[Effect, ...] = ()) -> None:
        super().__init__(code)
        self.code = code
        self.effects = effects


def user_wallet(state: Snapshot, wallet_id: str, missing: str) -> WalletState:
    # A system account is never a user: as sender, external:funding would mint money.
    wallet = None if is_system_wallet(wallet_id) else state.wallets.get(wallet_id)
    if wallet is None:
        raise Refused(missing)
    if wallet.status == FROZEN:
        raise Refused(WALLET_FROZEN)
    return wallet


def revenue_entries(payer: str, creator: str, gross: int, kind: str) -> tuple[list[Entry], dict[str, int]]:
    rule = rule_for(kind)
    assert rule is not None, kind
    parts = split(gross, rule)
    entries = [Entry(payer, -gross)]
    for party, amount in parts.items():
        if amount:
            entries.append(Entry(creator if party == CREATOR else party, amount))
    return entries, parts


def check_funds(state: Snapshot, entries: Iterable[Entry]) -> None:
    for entry in entries:
        # System wallets are per-partition buckets here: the platform's revenue and
        # processing buckets may dip (a refund in a partition that collected less).
        if entry.amount < 0 and not bucket_may_go_negative(entry.wallet_id):
            wallet = state.wallets.get(entry.wallet_id)
            if wallet is None:
                raise Refused(WALLET_NOT_FOUND)
            if wallet.balance + entry.amount < 0:
                raise Refused(INSUFFICIENT_FUNDS)
