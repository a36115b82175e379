"""Time as the ledger sees it: timezone-aware UTC, truncated to milliseconds.

MongoDB stores dates with millisecond precision. Truncating at the source means a
value read back compares equal to the one written, which the renewal idempotency
key (``renew:<id>:<expiresAt>``) and the audit hash chain both rely on.
"""

from __future__ import annotations

from datetime import UTC, datetime


def to_ms(moment: datetime) -> datetime:
    """Normalise to aware UTC with millisecond precision."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


def utcnow() -> datetime:
    return to_ms(datetime.now(UTC))


def iso(moment: datetime) -> str:
    """ISO-8601 with milliseconds and a ``Z``: one spelling for every timestamp."""
    moment = to_ms(moment)  # milliseconds of the UTC value: an offset may carry sub-seconds
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    return to_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))
