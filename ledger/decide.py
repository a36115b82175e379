"""The pure decision function for one batch of one partition.

Given the operations of a partition in acceptance order and a snapshot of the
state they touch, :func:`decide_batch` says for each operation either "settled,
with these ledger entries and side effects" or "failed, with this stable code".
Later operations see the effects of earlier ones in the same batch. The caller
writes the merged result in one database transaction.

The deciders live by theme (``ledger/payments.py``, ``ledger/money_out.py``) and are
bound to their operation classes in :data:`DECIDERS`, one explicit table: nothing
registers itself on import, and no decider module imports this one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from datetime import datetime

from ledger import money_out, payments
from ledger.effects import (
    EndSubscription,
    ExpireSubscription,
    ExtendSubscription,
    GrantUnlock,
    HoldPayout,
    MovePayout,
    Reversal,
    RevokeUnlock,
    StartSubscription,
)
from ledger.operations import (
    Chargeback,
    Credit,
    Gift,
    Operation,
    Payout,
    PayoutEvent,
    Refund,
    Renew,
    Subscribe,
    TopUp,
    Transfer,
    Unlock,
)
from ledger.outcomes import (
    ALREADY_SUBSCRIBED,
    ALREADY_UNLOCKED,
    CONTENT_NOT_FOUND,
    FAILURE_MESSAGES,
    INSUFFICIENT_FUNDS,
    INTERNAL_ERROR,
    NO_PLAN,
    NOT_REFUNDABLE,
    ORIGINAL_NOT_FOUND,
    OWN_CONTENT,
    PAYOUT_NOT_FOUND,
    PAYOUT_STATE_CONFLICT,
    RECEIVER_NOT_FOUND,
    REFUND_EXCEEDS_ORIGINAL,
    RENEWAL_STALE,
    SELF_TRANSFER,
    TOPUP_NOT_FOUND,
    WALLET_FROZEN,
    WALLET_NOT_FOUND,
    BatchDecision,
    ContentInfo,
    Entry,
    Failed,
    Original,
    Outcome,
    PayoutState,
    Plan,
    Settled,
    Snapshot,
    SubscriptionState,
    WalletState,
    failed,
)
from ledger.rules import Decider, Refused, check_funds
from ledger.states import ACTIVE, FROZEN, PayoutStatus, SubscriptionStatus
from ledger.timeutil import to_ms

# What the rest of the code has always imported from here (the types moved to ledger/outcomes.py).
__all__ = [
    "ACTIVE", "ALREADY_SUBSCRIBED", "ALREADY_UNLOCKED", "CONTENT_NOT_FOUND", "DECIDERS", "FAILURE_MESSAGES", "FROZEN",
    "INSUFFICIENT_FUNDS", "INTERNAL_ERROR", "NOT_REFUNDABLE", "NO_PLAN", "ORIGINAL_NOT_FOUND", "OWN_CONTENT",
    "PAYOUT_NOT_FOUND", "PAYOUT_STATE_CONFLICT", "RECEIVER_NOT_FOUND", "REFUND_EXCEEDS_ORIGINAL", "RENEWAL_STALE",
    "SELF_TRANSFER", "TOPUP_NOT_FOUND", "WALLET_FROZEN", "WALLET_NOT_FOUND", "BatchDecision", "ContentInfo",
    "EndSubscription", "Entry", "ExpireSubscription", "ExtendSubscription", "Failed", "GrantUnlock", "HoldPayout",
    "MovePayout", "Original", "Outcome", "PayoutState", "Plan", "Reversal", "RevokeUnlock", "Settled", "Snapshot",
    "StartSubscription", "SubscriptionState", "WalletState", "decide_batch", "failed",
]

# Every operation class and its decider; tests/unit/test_operation_registry.py walks every kind.
DECIDERS: dict[type, Decider] = {
    Transfer: payments.decide_transfer,
    Unlock: payments.decide_unlock,
    Subscribe: payments.decide_subscribe,
    Renew: payments.decide_renew,
    Gift: payments.decide_gift,
    TopUp: payments.decide_money_in,
    Credit: payments.decide_money_in,
    Payout: money_out.decide_payout,
    PayoutEvent: money_out.decide_payout_event,
    Refund: money_out.decide_refund,
    Chargeback: money_out.decide_chargeback,
}


def _decide_one(job_id: str, op: Operation, state: Snapshot, now: datetime) -> Settled:
    """Decide one operation against ``state``; raise :class:`Refused` on failure."""
    decider = DECIDERS.get(type(op))
    if decider is None:  # pragma: no cover - tests/unit/ledger check every kind has one
        raise TypeError(f"no decider for {type(op).__name__}")
    entries, result, effects = decider(job_id, op, state, now)
    if not getattr(op, "may_overdraw", False):  # a chargeback always applies: it may leave debt
        check_funds(state, entries)
    return Settled(job_id, op.kind, tuple(entries), result, tuple(effects), _balances(state, entries))


def _balances(state: Snapshot, entries: Iterable[Entry]) -> dict[str, tuple[int, int]]:
    moved: dict[str, int] = {}
    for entry in entries:
        moved[entry.wallet_id] = moved.get(entry.wallet_id, 0) + entry.amount
    out = {}
    for wallet_id, amount in moved.items():
        before = state.wallets[wallet_id].balance if wallet_id in state.wallets else 0
        out[wallet_id] = (before, before + amount)
    return out


def _apply(state: Snapshot, outcome: Outcome, now: datetime) -> None:
    if isinstance(outcome, Settled):
        for entry in outcome.entries:
            wallet = state.wallets.setdefault(entry.wallet_id, WalletState(0))
            wallet.balance += entry.amount
    for effect in outcome.effects:
        if isinstance(effect, GrantUnlock):
            state.unlocks.add((effect.user_id, effect.content_id))
        elif isinstance(effect, StartSubscription):
            state.subscriptions[effect.subscription_id] = SubscriptionState(
                effect.subscription_id, effect.subscriber_id, effect.creator_id, effect.price,
                effect.period_days, ACTIVE, effect.auto_renew, effect.expires_at, 0)
        elif isinstance(effect, ExtendSubscription):
            sub = state.subscriptions[effect.subscription_id]
            sub.expires_at = effect.new_expires_at
            sub.renewals += 1
        elif isinstance(effect, EndSubscription):
            state.subscriptions[effect.subscription_id].status = SubscriptionStatus.EXPIRED
        elif isinstance(effect, HoldPayout):
            state.payouts[effect.payout_id] = PayoutState(effect.payout_id, effect.user_id, effect.amount,
                                                          PayoutStatus.PENDING)
        elif isinstance(effect, MovePayout):
            state.payouts[effect.payout_id].status = effect.new_status
        elif isinstance(effect, RevokeUnlock):
            state.unlocks.discard((effect.user_id, effect.content_id))
        elif isinstance(effect, Reversal):
            # Later refunds in the same batch see this one (their sum never passes the original).
            original = state.originals.get(effect.original_job_id) or next(
                (t for t in state.topups.values() if t.job_id == effect.original_job_id), None)
            if original is not None:
                for wallet_id, amount in effect.legs:
                    original.reversed[wallet_id] = original.reversed.get(wallet_id, 0) + amount


def decide_batch(
    jobs: Sequence[tuple[str, Operation]], snapshot: Snapshot, now: datetime
) -> BatchDecision:
    """Decide every ``(job_id, operation)`` in order; ``snapshot`` is not modified."""
    now = to_ms(now)
    state = copy.deepcopy(snapshot)
    outcomes: list[Outcome] = []
    deltas: dict[str, int] = {}
    for job_id, op in jobs:
        try:
            outcome: Outcome = _decide_one(job_id, op, state, now)
        except Refused as refused:
            outcome = Failed(job_id, op.kind, refused.code, FAILURE_MESSAGES[refused.code], refused.effects)
        _apply(state, outcome, now)
        if isinstance(outcome, Settled):
            for entry in outcome.entries:
                deltas[entry.wallet_id] = deltas.get(entry.wallet_id, 0) + entry.amount
        outcomes.append(outcome)
    return BatchDecision(outcomes, {w: d for w, d in deltas.items() if d}, state)
