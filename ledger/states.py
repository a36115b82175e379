"""The named states of Purser's documents and principals.

``StrEnum`` members are ``str``: they compare equal to, and are stored in MongoDB
as, their plain values, so documents written before these enums keep working.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """An operation's kind: the job's ``type`` (one class each in ``ledger/operations.py``)."""

    TRANSFER = "transfer"
    UNLOCK = "unlock"
    SUBSCRIBE = "subscribe"
    RENEW = "renew"
    GIFT = "gift"
    TOPUP = "topup"
    CREDIT = "credit"
    PAYOUT = "payout"
    PAYOUT_EVENT = "payout_event"
    REFUND = "refund"
    CHARGEBACK = "chargeback"


class Actor(StrEnum):
    """Who stands behind a job in the audit log."""

    USER = "user"
    PROVIDER = "provider"
    SYSTEM = "system"
    ADMIN = "admin"


class JobStatus(StrEnum):
    QUEUED = "queued"
    SETTLED = "settled"
    FAILED = "failed"


TERMINAL_JOB_STATUSES = (JobStatus.SETTLED, JobStatus.FAILED)


class WalletStatus(StrEnum):
    ACTIVE = "active"
    FROZEN = "frozen"


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    EXPIRED = "expired"


class PayoutStatus(StrEnum):
    PENDING = "pending"  # held, not yet accepted by the provider
    SUBMITTED = "submitted"  # sent to the provider (answer maybe lost: resolved by a status lookup)
    PAID = "paid"
    FAILED = "failed"  # hold voided, money spendable again
    EXPIRED = "expired"  # never submitted within PAYOUT_HOLD_TTL_HOURS: hold voided
    RETURNED = "returned"  # paid, then returned by the bank: compensating credit


OPEN_PAYOUT_STATUSES = (PayoutStatus.PENDING, PayoutStatus.SUBMITTED)


class Role(StrEnum):
    FREE = "free"
    PREMIUM = "premium"
    CREATOR = "creator"
    ADMIN = "admin"


ACTIVE = WalletStatus.ACTIVE
FROZEN = WalletStatus.FROZEN
