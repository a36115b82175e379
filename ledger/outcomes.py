"""What a decision is made of and gives: the batch's state, outcomes and stable failure codes.

Shared by the deciders (``ledger/payments.py``, ``ledger/money_out.py``), the batch
decision (``ledger/decide.py``) and the write plan; it imports no decider.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.effects import Effect
from ledger.states import ACTIVE

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


def failed(job_id: str, kind: str, code: str, message: str | None = None) -> Failed:
    """A failure outside the rules (e.g. ``INTERNAL_ERROR`` for a job that crashed)."""
    return Failed(job_id, kind, code, message or FAILURE_MESSAGES.get(code, code))
