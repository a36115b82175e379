"""Money operations as small immutable values.

Amounts are validated on construction (:func:`ledger.money.coins`), so a job whose
stored parameters were tampered with cannot become an operation at all.

Each operation names the one wallet that decides its partition: the user wallet
it debits or, for money coming in (top-up, credit), the wallet it credits. Every
operation that touches a given wallet's balance downward is therefore settled by
one partition, in acceptance order.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from ledger.money import coins
from ledger.states import Actor, Kind, PayoutStatus
from ledger.timeutil import iso, parse_iso


@dataclass
class Reads:
    """The stored state an operation's decision depends on (loaded by the service).

    Derived reads are the loader's job: a content brings its creator's wallet and the
    user's unlock of it; a subscription brings its creator's wallet and plan.
    """

    wallets: set[str] = field(default_factory=set)
    contents: set[str] = field(default_factory=set)
    unlocks: set[tuple[str, str]] = field(default_factory=set)  # (user, content)
    plans: set[str] = field(default_factory=set)  # creator ids
    subscriptions: set[str] = field(default_factory=set)  # subscription ids
    subscriber_pairs: set[tuple[str, str]] = field(default_factory=set)  # (subscriber, creator)
    payouts: set[str] = field(default_factory=set)  # payout ids
    originals: set[str] = field(default_factory=set)  # job ids of settled operations being refunded
    topups: set[str] = field(default_factory=set)  # provider transaction ids being charged back

    def update(self, other: Reads) -> Reads:
        self.wallets |= other.wallets
        self.contents |= other.contents
        self.unlocks |= other.unlocks
        self.plans |= other.plans
        self.subscriptions |= other.subscriptions
        self.subscriber_pairs |= other.subscriber_pairs
        self.payouts |= other.payouts
        self.originals |= other.originals
        self.topups |= other.topups
        return self


class _Routed:
    """Names the wallet that decides the operation's partition (``wallet_field``).

    Every operation class also declares its own facts, read wherever the kind matters
    (``tests/unit/test_operation_registry.py`` fails when one lacks a fact):

    * ``kind``: its :class:`~ledger.states.Kind`, the job's ``type``;
    * ``actor``: who stands behind its jobs in the audit log;
    * ``refund_debtor``: the field of its settled result naming the wallet a refund
      takes the money back from (the refund's routing wallet), or None: not refundable;
    * ``events``: the webhook events its settled job gives besides ``job.settled``
      (several: the one named by its result's ``status``);
    * ``may_overdraw``: it may take its user wallet below zero (debt).

    Its decider is bound in ``ledger.decide.DECIDERS``.
    """

    kind: ClassVar[Kind]
    actor: ClassVar[Actor]
    refund_debtor: ClassVar[str | None]
    events: ClassVar[tuple[str, ...]]
    may_overdraw: ClassVar[bool] = False
    wallet_field: ClassVar[str]
    # The field that carries the operation's own job id (a payout's id IS its job's id,
    # the provider's idempotency key), or None. Set when the job is built, so a retry
    # that takes over a stale idempotency claim names the claim's job, not a new one.
    job_id_field: ClassVar[str | None] = None

    @property
    def wallet(self) -> str:
        return getattr(self, self.wallet_field)

    def reads(self) -> Reads:
        """What the decision reads; every operation reads its routing wallet."""
        return Reads(wallets={self.wallet})


class _Amounted(_Routed):
    """An operation carrying an ``amount``: refused on construction unless valid coins."""

    amount: int

    def __post_init__(self) -> None:
        coins(self.amount)


@dataclass(frozen=True)
class Transfer(_Amounted):
    kind: ClassVar[Kind] = Kind.TRANSFER
    actor: ClassVar[Actor] = Actor.USER
    refund_debtor: ClassVar[str | None] = "receiverId"
    events: ClassVar[tuple[str, ...]] = ()
    wallet_field: ClassVar[str] = "sender"
    sender: str
    receiver: str
    amount: int
    note: str | None = None

    def reads(self) -> Reads:
        return Reads(wallets={self.sender, self.receiver})


@dataclass(frozen=True)
class Unlock(_Routed):
    kind: ClassVar[Kind] = Kind.UNLOCK
    actor: ClassVar[Actor] = Actor.USER
    refund_debtor: ClassVar[str | None] = "creatorId"
    events: ClassVar[tuple[str, ...]] = ()
    wallet_field: ClassVar[str] = "user"
    user: str
    content_id: str

    def reads(self) -> Reads:
        return Reads(wallets={self.user}, contents={self.content_id}, unlocks={(self.user, self.content_id)})


@dataclass(frozen=True)
class Subscribe(_Routed):
    kind: ClassVar[Kind] = Kind.SUBSCRIBE
    actor: ClassVar[Actor] = Actor.USER
    refund_debtor: ClassVar[str | None] = "creatorId"
    events: ClassVar[tuple[str, ...]] = ()
    wallet_field: ClassVar[str] = "subscriber"
    subscriber: str
    creator: str
    auto_renew: bool = True

    def reads(self) -> Reads:
        return Reads(wallets={self.subscriber, self.creator}, plans={self.creator},
                     subscriber_pairs={(self.subscriber, self.creator)})


@dataclass(frozen=True)
class Renew(_Routed):
    kind: ClassVar[Kind] = Kind.RENEW
    actor: ClassVar[Actor] = Actor.SYSTEM
    refund_debtor: ClassVar[str | None] = "creatorId"
    events: ClassVar[tuple[str, ...]] = ()
    wallet_field: ClassVar[str] = "subscriber"
    subscriber: str
    subscription_id: str
    period_end: datetime

    def reads(self) -> Reads:
        return Reads(wallets={self.subscriber}, subscriptions={self.subscription_id})


@dataclass(frozen=True)
class Gift(_Amounted):
    kind: ClassVar[Kind] = Kind.GIFT
    actor: ClassVar[Actor] = Actor.USER
    refund_debtor: ClassVar[str | None] = "creatorId"
    events: ClassVar[tuple[str, ...]] = ()
    wallet_field: ClassVar[str] = "sender"
    sender: str
    creator: str
    amount: int
    message: str | None = None

    def reads(self) -> Reads:
        return Reads(wallets={self.sender, self.creator})


@dataclass(frozen=True)
class TopUp(_Amounted):
    kind: ClassVar[Kind] = Kind.TOPUP
    actor: ClassVar[Actor] = Actor.PROVIDER
    refund_debtor: ClassVar[str | None] = None
    events: ClassVar[tuple[str, ...]] = ()
    wallet_field: ClassVar[str] = "user"
    user: str
    amount: int
    provider_tx_id: str


@dataclass(frozen=True)
class Credit(_Amounted):
    kind: ClassVar[Kind] = Kind.CREDIT
    actor: ClassVar[Actor] = Actor.ADMIN
    refund_debtor: ClassVar[str | None] = None
    events: ClassVar[tuple[str, ...]] = ()
    wallet_field: ClassVar[str] = "user"
    user: str
    amount: int
    reason: str


@dataclass(frozen=True)
class Payout(_Amounted):
    """Hold ``amount`` of the user's balance for a payout to the bank (two-phase: hold,
    then post on ``paid`` or void on ``failed``/``expired``)."""

    kind: ClassVar[Kind] = Kind.PAYOUT
    actor: ClassVar[Actor] = Actor.USER
    refund_debtor: ClassVar[str | None] = None
    events: ClassVar[tuple[str, ...]] = ("payout.pending",)
    wallet_field: ClassVar[str] = "user"
    job_id_field: ClassVar[str | None] = "payout_id"
    user: str
    amount: int
    payout_id: str = ""

    def reads(self) -> Reads:
        return Reads(wallets={self.user}, payouts={self.payout_id})


PAYOUT_EVENTS = ("paid", "failed", "returned", "expired")


@dataclass(frozen=True)
class PayoutEvent(_Routed):
    """What the provider (or the hold's expiry) says about a payout: post, void or return."""

    kind: ClassVar[Kind] = Kind.PAYOUT_EVENT
    actor: ClassVar[Actor] = Actor.PROVIDER
    refund_debtor: ClassVar[str | None] = None
    # The payout's new status names the event (a "failed" after "paid" is a return).
    events: ClassVar[tuple[str, ...]] = tuple(f"payout.{s.value}" for s in (
        PayoutStatus.PAID, PayoutStatus.FAILED, PayoutStatus.EXPIRED, PayoutStatus.RETURNED))
    wallet_field: ClassVar[str] = "user"
    user: str
    payout_id: str
    event: str
    event_id: str

    def __post_init__(self) -> None:
        if self.event not in PAYOUT_EVENTS:
            raise ValueError(f"unknown payout event {self.event!r}")

    def reads(self) -> Reads:
        return Reads(wallets={self.user}, payouts={self.payout_id})


REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")


@dataclass(frozen=True)
class Refund(_Routed):
    """Give back (part of) a settled operation. Routed by the wallet that received the
    original's main credit (creator or receiver), so every refund of one original is
    settled by one partition, in order, and their sum cannot pass the original."""

    kind: ClassVar[Kind] = Kind.REFUND
    actor: ClassVar[Actor] = Actor.ADMIN
    refund_debtor: ClassVar[str | None] = None
    events: ClassVar[tuple[str, ...]] = ("refund.settled",)
    wallet_field: ClassVar[str] = "debtor"
    debtor: str
    original_job_id: str
    amount: int | None
    reason: str

    def __post_init__(self) -> None:
        if self.amount is not None:
            coins(self.amount)
        if self.reason not in REFUND_REASONS:
            raise ValueError(f"unknown refund reason {self.reason!r}")

    def reads(self) -> Reads:
        return Reads(wallets={self.debtor}, originals={self.original_job_id})


@dataclass(frozen=True)
class Chargeback(_Amounted):
    """A card dispute reversing (part of) a top-up: always applies, may leave debt."""

    kind: ClassVar[Kind] = Kind.CHARGEBACK
    actor: ClassVar[Actor] = Actor.PROVIDER
    refund_debtor: ClassVar[str | None] = None
    events: ClassVar[tuple[str, ...]] = ("chargeback.settled",)
    wallet_field: ClassVar[str] = "user"
    may_overdraw: ClassVar[bool] = True
    user: str
    amount: int
    provider_tx_id: str
    event_id: str

    def reads(self) -> Reads:
        return Reads(wallets={self.user}, topups={self.provider_tx_id})


Operation = Transfer | Unlock | Subscribe | Renew | Gift | TopUp | Credit | Payout | PayoutEvent | Refund | Chargeback

OPERATION_TYPES: dict[str, type[Operation]] = {
    cls.kind: cls for cls in (Transfer, Unlock, Subscribe, Renew, Gift, TopUp, Credit, Payout, PayoutEvent,
                              Refund, Chargeback)
}
# Kinds whose settled jobs an admin may refund, and the result field naming who repays.
REFUND_DEBTORS: dict[str, str] = {kind: cls.refund_debtor for kind, cls in OPERATION_TYPES.items()
                                  if cls.refund_debtor is not None}


def partition_of(wallet_id: str, partitions: int) -> int:
    """Stable partition of a wallet: CRC-32, identical in every process and release.

    Python's ``hash()`` is salted per process and would scatter one wallet's jobs.
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return zlib.crc32(wallet_id.encode("utf-8")) % partitions


def to_params(op: Operation) -> dict[str, Any]:
    """The JSON-safe parameters stored on the job document."""
    params = asdict(op)
    if isinstance(op, Renew):
        params["period_end"] = iso(op.period_end)
    return params


def from_params(kind: str, params: dict[str, Any]) -> Operation:
    """Rebuild an operation from a job's ``type`` and ``params``."""
    try:
        cls = OPERATION_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown operation type {kind!r}") from None
    values = dict(params)
    if cls is Renew:
        values["period_end"] = parse_iso(values["period_end"])
    return cls(**values)
