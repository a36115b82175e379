"""The pure decision function for one batch of one partition.

Given the operations of a partition in acceptance order and a snapshot of the
state they touch, :func:`decide_batch` says for each operation either "settled,
with these ledger entries and side effects" or "failed, with this stable code".
Later operations see the effects of earlier ones in the same batch. The caller
writes the merged result in one database transaction.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ledger.effects import (
    Effect,
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
from ledger.money import EXTERNAL_FUNDING, bucket_may_go_negative, is_system_wallet
from ledger.operations import Credit, Gift, Operation, Renew, Subscribe, TopUp, Transfer, Unlock
from ledger.splits import CREATOR, rule_for, split
from ledger.states import ACTIVE, FROZEN, PayoutStatus, SubscriptionStatus
from ledger.timeutil import to_ms

# Stable failure codes: part of the HTTP contract (job.error.code).
INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
WALLET_FROZEN = "WALLET_FROZEN"
WALLET_NOT_FOUND = "WALLET_NOT_FOUND"
SELF_TRANSFER = "SELF_TRANSFER"
RECEIVER_NOT_FOUND = "RECEIVER_NOT_FOUND"
CONTENT_NOT_FOUND = "CONTENT_NOT_FOUND"
ALREADY_UNLOCKED = "ALREADY_UNLOCKED"
OWN_CONTENT = "OWN_CONTENT"
NO_PLAN = "NO_PLAN"
ALREADY_SUBSCRIBED = "ALREADY_SUBSCRIBED"
RENEWAL_STALE = "RENEWAL_STALE"
INTERNAL_ERROR = "INTERNAL_ERROR"
PAYOUT_NOT_FOUND = "PAYOUT_NOT_FOUND"
PAYOUT_STATE_CONFLICT = "PAYOUT_STATE_CONFLICT"
ORIGINAL_NOT_FOUND = "ORIGINAL_NOT_FOUND"
NOT_REFUNDABLE = "NOT_REFUNDABLE"
REFUND_EXCEEDS_ORIGINAL = "REFUND_EXCEEDS_ORIGINAL"
TOPUP_NOT_FOUND = "TOPUP_NOT_FOUND"

FAILURE_MESSAGES = {
    INSUFFICIENT_FUNDS: "The wallet balance does not cover the amount.",
    WALLET_FROZEN: "A wallet involved in this operation is frozen.",
    WALLET_NOT_FOUND: "The paying wallet does not exist.",
    SELF_TRANSFER: "The sender and the receiver are the same user.",
    RECEIVER_NOT_FOUND: "The receiving user does not exist.",
    CONTENT_NOT_FOUND: "The content does not exist or is no longer offered.",
    ALREADY_UNLOCKED: "The content is already unlocked for this user.",
    OWN_CONTENT: "Creators cannot unlock their own content.",
    NO_PLAN: "The creator offers no subscription plan.",
    ALREADY_SUBSCRIBED: "An active subscription to this creator already exists.",
    RENEWAL_STALE: "The subscription period was already renewed or ended.",
    INTERNAL_ERROR: "The operation could not be processed.",
    PAYOUT_NOT_FOUND: "The payout does not exist for this wallet.",
    PAYOUT_STATE_CONFLICT: "The payout is not in a state this event applies to; nothing was moved.",
    ORIGINAL_NOT_FOUND: "The operation to refund does not exist or is not settled.",
    NOT_REFUNDABLE: "Only settled unlocks, gifts, subscription charges and transfers can be refunded.",
    REFUND_EXCEEDS_ORIGINAL: "The amount exceeds what is left to refund of the original.",
    TOPUP_NOT_FOUND: "No settled top-up with this provider transaction id for this wallet.",
}



@dataclass
class WalletState:
    balance: int
    status: str = ACTIVE


@dataclass(frozen=True)
class ContentInfo:
    content_id: str
    creator_id: str
    price: int
    active: bool = True


@dataclass(frozen=True)
class Plan:
    creator_id: str
    price: int
    period_days: int
    active: bool = True


@dataclass
class SubscriptionState:
    subscription_id: str
    subscriber_id: str
    creator_id: str
    price: int
    period_days: int
    status: str
    auto_renew: bool
    expires_at: datetime
    renewals: int = 0


@dataclass
class PayoutState:
    payout_id: str
    user_id: str
    amount: int
    status: str  # ledger.states.PayoutStatus


@dataclass
class Original:
    """A settled operation as refunds and chargebacks see it.

    ``legs`` are the original's credits in entry order (creator, platform, processing;
    a transfer's receiver; a top-up's user); ``reversed`` what earlier refunds or
    chargebacks already took back from each leg.
    """

    job_id: str
    kind: str
    payer: str
    legs: tuple[tuple[str, int], ...]
    result: dict[str, Any]
    reversed: dict[str, int] = field(default_factory=dict)

    @property
    def gross(self) -> int:
        return sum(amount for _, amount in self.legs)

    @property
    def remaining(self) -> int:
        return self.gross - sum(self.reversed.values())


@dataclass
class Snapshot:
    """The state a batch touches. Absent keys mean "does not exist"."""

    wallets: dict[str, WalletState] = field(default_factory=dict)
    contents: dict[str, ContentInfo] = field(default_factory=dict)
    unlocks: set[tuple[str, str]] = field(default_factory=set)
    plans: dict[str, Plan] = field(default_factory=dict)
    subscriptions: dict[str, SubscriptionState] = field(default_factory=dict)
    payouts: dict[str, PayoutState] = field(default_factory=dict)
    originals: dict[str, Original] = field(default_factory=dict)  # by job id (refunds)
    topups: dict[str, Original] = field(default_factory=dict)  # by provider transaction id (chargebacks)

    def has_active_subscription(self, subscriber: str, creator: str) -> bool:
        return any(
            s.status == ACTIVE and s.subscriber_id == subscriber and s.creator_id == creator
            for s in self.subscriptions.values()
        )


@dataclass(frozen=True)
class Entry:
    wallet_id: str
    amount: int


@dataclass(frozen=True)
class Settled:
    job_id: str
    kind: str
    entries: tuple[Entry, ...]
    result: dict[str, Any]
    effects: tuple[Effect, ...]
    balances: dict[str, tuple[int, int]]  # wallet -> (before, after) for the audit log

    ok = True


@dataclass(frozen=True)
class Failed:
    job_id: str
    kind: str
    code: str
    message: str
    effects: tuple[Effect, ...] = ()

    ok = False


Outcome = Settled | Failed


@dataclass
class BatchDecision:
    outcomes: list[Outcome]
    deltas: dict[str, int]  # merged, non-zero, per wallet
    state: Snapshot  # the snapshot after every operation of the batch


class _Refused(Exception):
    def __init__(self, code: str, effects: tuple[Effect, ...] = ()) -> None:
        super().__init__(code)
        self.code = code
        self.effects = effects


def _user_wallet(state: Snapshot, wallet_id: str, missing: str) -> WalletState:
    # A system account is never a user: as sender, external:funding would mint money.
    wallet = None if is_system_wallet(wallet_id) else state.wallets.get(wallet_id)
    if wallet is None:
        raise _Refused(missing)
    if wallet.status == FROZEN:
        raise _Refused(WALLET_FROZEN)
    return wallet


def _revenue_entries(payer: str, creator: str, gross: int, kind: str) -> tuple[list[Entry], dict[str, int]]:
    rule = rule_for(kind)
    assert rule is not None, kind
    parts = split(gross, rule)
    entries = [Entry(payer, -gross)]
    for party, amount in parts.items():
        if amount:
            entries.append(Entry(creator if party == CREATOR else party, amount))
    return entries, parts


# One decider per operation type: (job_id, op, state, now) -> (entries, result, effects).
# Raising _Refused fails the job with its code. Adding an operation kind means one
# class in ledger/operations.py (its parameters and reads) and one decider here; a
# test fails when a kind has no decider, split rule or request schema.
Decider = Callable[[str, Any, Snapshot, datetime], tuple[list[Entry], dict[str, Any], list[Effect]]]
DECIDERS: dict[type, Decider] = {}


def decides(cls: type) -> Callable[[Decider], Decider]:
    def register(fn: Decider) -> Decider:
        DECIDERS[cls] = fn
        return fn
    return register


@decides(Transfer)
def _transfer(job_id: str, op: Transfer, state: Snapshot, now: datetime) -> tuple[list[Entry], dict, list]:
    if op.sender == op.receiver:
        raise _Refused(SELF_TRANSFER)
    _user_wallet(state, op.sender, WALLET_NOT_FOUND)
    _user_wallet(state, op.receiver, RECEIVER_NOT_FOUND)
    entries = [Entry(op.sender, -op.amount), Entry(op.receiver, op.amount)]
    return entries, {"amount": op.amount, "receiverId": op.receiver}, []


@decides(Unlock)
def _unlock(job_id: str, op: Unlock, state: Snapshot, now: datetime) -> tuple[list[Entry], dict, list]:
    content = state.contents.get(op.content_id)
    if content is None or not content.active:
        raise _Refused(CONTENT_NOT_FOUND)
    if content.creator_id == op.user:
        raise _Refused(OWN_CONTENT)
    if (op.user, op.content_id) in state.unlocks:
        raise _Refused(ALREADY_UNLOCKED)
    _user_wallet(state, op.user, WALLET_NOT_FOUND)
    _user_wallet(state, content.creator_id, RECEIVER_NOT_FOUND)
    entries, parts = _revenue_entries(op.user, content.creator_id, content.price, op.kind)
    result = {"amount": content.price, "contentId": op.content_id, "creatorId": content.creator_id,
              "split": parts}
    return entries, result, [GrantUnlock(op.user, op.content_id, content.creator_id, content.price)]


@decides(Subscribe)
def _subscribe(job_id: str, op: Subscribe, state: Snapshot, now: datetime) -> tuple[list[Entry], dict, list]:
    if op.subscriber == op.creator:
        raise _Refused(SELF_TRANSFER)
    plan = state.plans.get(op.creator)
    if plan is None or not plan.active:
        raise _Refused(NO_PLAN)
    if state.has_active_subscription(op.subscriber, op.creator):
        raise _Refused(ALREADY_SUBSCRIBED)
    _user_wallet(state, op.subscriber, WALLET_NOT_FOUND)
    _user_wallet(state, op.creator, RECEIVER_NOT_FOUND)
    entries, parts = _revenue_entries(op.subscriber, op.creator, plan.price, op.kind)
    expires = now + timedelta(days=plan.period_days)
    effect = StartSubscription(job_id, op.subscriber, op.creator, plan.price, plan.period_days,
                               op.auto_renew, now, expires)
    result = {"amount": plan.price, "creatorId": op.creator, "subscriptionId": job_id,
              "expiresAt": expires, "split": parts}
    return entries, result, [effect]


@decides(Renew)
def _renew(job_id: str, op: Renew, state: Snapshot, now: datetime) -> tuple[list[Entry], dict, list]:
    sub = state.subscriptions.get(op.subscription_id)
    # A renewal is valid only for the period it was issued for, and only while the
    # subscriber still wants it (a cancel after the tick must not be charged).
    if sub is None or sub.status != ACTIVE or sub.expires_at != op.period_end \
            or sub.subscriber_id != op.subscriber or not sub.auto_renew:
        raise _Refused(RENEWAL_STALE)
    plan = state.plans.get(sub.creator_id)
    if plan is None or not plan.active:
        raise _Refused(NO_PLAN, (ExpireSubscription(sub.subscription_id, NO_PLAN),))
    try:
        _user_wallet(state, op.subscriber, WALLET_NOT_FOUND)
        _user_wallet(state, sub.creator_id, RECEIVER_NOT_FOUND)
        entries, parts = _revenue_entries(op.subscriber, sub.creator_id, sub.price, op.kind)
        _check_funds(state, entries)
    except _Refused as refused:
        raise _Refused(refused.code, (ExpireSubscription(sub.subscription_id, refused.code),)) from None
    new_end = sub.expires_at + timedelta(days=sub.period_days)
    result = {"amount": sub.price, "creatorId": sub.creator_id, "subscriptionId": sub.subscription_id,
              "expiresAt": new_end, "split": parts}
    return entries, result, [ExtendSubscription(sub.subscription_id, sub.expires_at, new_end)]


@decides(Gift)
def _gift(job_id: str, op: Gift, state: Snapshot, now: datetime) -> tuple[list[Entry], dict, list]:
    if op.sender == op.creator:
        raise _Refused(SELF_TRANSFER)
    _user_wallet(state, op.sender, WALLET_NOT_FOUND)
    _user_wallet(state, op.creator, RECEIVER_NOT_FOUND)
    entries, parts = _revenue_entries(op.sender, op.creator, op.amount, op.kind)
    return entries, {"amount": op.amount, "creatorId": op.creator, "split": parts}, []


@decides(TopUp)
@decides(Credit)
def _money_in(job_id: str, op: TopUp | Credit, state: Snapshot, now: datetime) -> tuple[list[Entry], dict, list]:
    _user_wallet(state, op.user, RECEIVER_NOT_FOUND)
    entries = [Entry(EXTERNAL_FUNDING, -op.amount), Entry(op.user, op.amount)]
    result: dict[str, Any] = {"amount": op.amount}
    if isinstance(op, TopUp):
        result["providerTxId"] = op.provider_tx_id
    return entries, result, []


def _decide_one(job_id: str, op: Operation, state: Snapshot, now: datetime) -> Settled:
    """Decide one operation against ``state``; raise :class:`_Refused` on failure."""
    decider = DECIDERS.get(type(op))
    if decider is None:  # pragma: no cover - tests/unit/ledger check every kind has one
        raise TypeError(f"no decider for {type(op).__name__}")
    entries, result, effects = decider(job_id, op, state, now)
    if not getattr(op, "may_overdraw", False):  # a chargeback always applies: it may leave debt
        _check_funds(state, entries)
    return Settled(job_id, op.kind, tuple(entries), result, tuple(effects), _balances(state, entries))


def _check_funds(state: Snapshot, entries: Iterable[Entry]) -> None:
    for entry in entries:
        # System wallets are per-partition buckets here: the platform's revenue and
        # processing buckets may dip (a refund in a partition that collected less).
        if entry.amount < 0 and not bucket_may_go_negative(entry.wallet_id):
            wallet = state.wallets.get(entry.wallet_id)
            if wallet is None:
                raise _Refused(WALLET_NOT_FOUND)
            if wallet.balance + entry.amount < 0:
                raise _Refused(INSUFFICIENT_FUNDS)


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
        except _Refused as refused:
            outcome = Failed(job_id, op.kind, refused.code, FAILURE_MESSAGES[refused.code], refused.effects)
        _apply(state, outcome, now)
        if isinstance(outcome, Settled):
            for entry in outcome.entries:
                deltas[entry.wallet_id] = deltas.get(entry.wallet_id, 0) + entry.amount
        outcomes.append(outcome)
    return BatchDecision(outcomes, {w: d for w, d in deltas.items() if d}, state)


def failed(job_id: str, kind: str, code: str, message: str | None = None) -> Failed:
    """A failure outside the rules (e.g. ``INTERNAL_ERROR`` for a job that crashed)."""
    return Failed(job_id, kind, code, message or FAILURE_MESSAGES.get(code, code))


# Deciders of money out and money back register themselves on import (one module per theme).
from ledger import money_out  # noqa: E402,F401
