"""The named states of Purser's documents and principals.

``StrEnum`` members are ``str``: they compare equal to, and are stored in MongoDB
as, their plain values, so documents written before these enums keep working.
"""

from __future__ import annotations

from enum import StrEnum


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


class Role(StrEnum):
    FREE = "free"
    PREMIUM = "premium"
    CREATOR = "creator"
    ADMIN = "admin"


ACTIVE = WalletStatus.ACTIVE
FROZEN = WalletStatus.FROZEN
