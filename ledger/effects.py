"""Side effects of a decision besides balances, and the document each one writes.

A decider returns effects; ``ledger.decide`` applies them to the batch's working
state (so later jobs of the batch see them) and ``ledger.write_plan`` asks each for
its :meth:`write`, executed in the batch's transaction. A new effect is one class
here with its ``collection`` and ``write``; ``tests/unit/ledger/test_write_plan.py``
walks every effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from ledger.states import PayoutStatus, SubscriptionStatus
from ledger.writes import STATE, Delete, Insert, Update, Write

Job = Mapping[str, Any]


@dataclass(frozen=True)
class GrantUnlock:
    collection: ClassVar[str] = "unlocks"
    user_id: str
    content_id: str
    creator_id: str
    price: int

    def write(self, job: Job, now: datetime) -> Write:
        return Insert({"userId": self.user_id, "contentId": self.content_id, "creatorId": self.creator_id,
                       "price": self.price, "jobId": job["_id"], "createdAt": now})


@dataclass(frozen=True)
class RevokeUnlock:
    collection: ClassVar[str] = "unlocks"
    user_id: str
    content_id: str

    def write(self, job: Job, now: datetime) -> Write:
        return Delete({"userId": self.user_id, "contentId": self.content_id})


@dataclass(frozen=True)
class StartSubscription:
    collection: ClassVar[str] = "subscriptions"
    subscription_id: str
    subscriber_id: str
    creator_id: str
    price: int
    period_days: int
    auto_renew: bool
    started_at: datetime
    expires_at: datetime

    def write(self, job: Job, now: datetime) -> Write:
        return Insert({"_id": self.subscription_id, "subscriberId": self.subscriber_id,
                       "creatorId": self.creator_id, "price": self.price, "periodDays": self.period_days,
                       "status": SubscriptionStatus.ACTIVE, "autoRenew": self.auto_renew,
                       "startedAt": self.started_at, "expiresAt": self.expires_at, "renewals": 0,
                       "jobId": job["_id"], "createdAt": now})


@dataclass(frozen=True)
class ExtendSubscription:
    collection: ClassVar[str] = "subscriptions"
    subscription_id: str
    old_expires_at: datetime
    new_expires_at: datetime

    def write(self, job: Job, now: datetime) -> Write:
        # Filtered on _id alone: the decision read this subscription (status, expiresAt)
        # inside the batch's own transaction, so a tick or cancel that changed it since
        # is a WriteConflict (snapshot isolation), and the batch holds its partition's
        # head under the seq guard. Repeating status/expiresAt here would add nothing
        # and cost the embedded store its _id fast path (as ``write_plan.job_update``).
        # The guard stays: a subscription that is gone must not pass silently.
        return Update({"_id": self.subscription_id},
                      {"$set": {"expiresAt": self.new_expires_at, "lastRenewedAt": now}, "$inc": {"renewals": 1}},
                      guard=STATE)


@dataclass(frozen=True)
class EndSubscription:
    """A subscription ends now: its renewal failed (``reason`` = the failure code) or it was refunded."""

    collection: ClassVar[str] = "subscriptions"
    subscription_id: str
    reason: str

    def write(self, job: Job, now: datetime) -> Write:
        return Update({"_id": self.subscription_id, "status": SubscriptionStatus.ACTIVE},
                      {"$set": {"status": SubscriptionStatus.EXPIRED, "endedReason": self.reason, "endedAt": now}},
                      guard=STATE)


# The renewal path's name for the same fact (one class: the documents are the same).
ExpireSubscription = EndSubscription


@dataclass(frozen=True)
class HoldPayout:
    collection: ClassVar[str] = "payouts"
    payout_id: str
    user_id: str
    amount: int

    def write(self, job: Job, now: datetime) -> Write:
        return Insert({"_id": self.payout_id, "userId": self.user_id, "amount": self.amount,
                       "status": PayoutStatus.PENDING, "partition": job.get("partition"), "jobId": job["_id"],
                       "createdAt": now, "updatedAt": now, "events": []})


@dataclass(frozen=True)
class MovePayout:
    collection: ClassVar[str] = "payouts"
    payout_id: str
    old_status: str
    new_status: str
    event_id: str

    def write(self, job: Job, now: datetime) -> Write:
        # Guarded on the status decided from: the submitter may move a pending payout meanwhile.
        return Update({"_id": self.payout_id, "status": self.old_status},
                      {"$set": {"status": self.new_status, "updatedAt": now},
                       "$push": {"events": {"eventId": self.event_id, "status": self.new_status,
                                            "jobId": job["_id"], "at": now}}}, guard=STATE)


@dataclass(frozen=True)
class Reversal:
    """Links a refund or chargeback's ledger record (its job) to the original it reverses."""

    collection: ClassVar[str] = "jobs"
    original_job_id: str
    legs: tuple[tuple[str, int], ...]  # what each leg of the original gave back (allocated)
    reason: str

    def write(self, job: Job, now: datetime) -> None:
        """No document of its own: it annotates the job's ledger fields (``refundOf``, ``refundLegs``)."""
        return None

    def annotation(self) -> dict[str, Any]:
        return {"refundOf": self.original_job_id,
                "refundLegs": [{"walletId": w, "amount": a} for w, a in self.legs], "reason": self.reason}


Effect = GrantUnlock | RevokeUnlock | StartSubscription | ExtendSubscription | EndSubscription | HoldPayout \
    | MovePayout | Reversal
EFFECT_TYPES: tuple[type, ...] = (GrantUnlock, RevokeUnlock, StartSubscription, ExtendSubscription, EndSubscription,
                                  HoldPayout, MovePayout, Reversal)
