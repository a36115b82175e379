"""Calendar months (UTC) and payout schedule slots: the time grid of money over time.

Every bound is a millisecond instant, like every date the ledger writes
(``ledger.timeutil``): a month is ``[start, end)``, and "as of the end of the month"
is the last millisecond before ``end``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ledger.timeutil import to_ms

MS = timedelta(milliseconds=1)
_PERIOD_RE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])", re.ASCII)


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        """The first instant of the next month (exclusive bound)."""
        return self.next().start

    @property
    def last_instant(self) -> datetime:
        return self.end - MS

    def next(self) -> Month:
        return Month(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> Month:
        return Month(self.year - (self.month == 1), (self.month - 2) % 12 + 1)


def parse_month(text: str) -> Month:
    """``YYYY-MM`` -> :class:`Month`; ValueError for anything else (``2026-13``, ``2026-1``)."""
    match = _PERIOD_RE.fullmatch(text)
    if match is None or int(match.group(1)) < 1970:
        raise ValueError(f"not a month: {text!r} (expected YYYY-MM)")
    return Month(int(match.group(1)), int(match.group(2)))


def month_of(moment: datetime) -> Month:
    moment = to_ms(moment)
    return Month(moment.year, moment.month)


def is_closed(month: Month, now: datetime, settle_margin: timedelta) -> bool:
    """A month is closed once no transaction dated inside it can still commit.

    A settlement transaction stamps its date before it commits; MongoDB aborts any
    transaction older than its lifetime limit (60 s by default), so after ``end +
    settle_margin`` (longer than that limit) the month's ledger can no longer change.
    """
    return now >= month.end + settle_margin


# --- payout schedule slots ------------------------------------------------------------

INTERVALS = ("daily", "weekly", "monthly")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# Days 29-31 do not exist in every month: a schedule on them would skip months silently.
MAX_MONTH_DAY = 28


class BadSchedule(ValueError):
    """An interval or anchor that names no slot (``code`` is the problem code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_anchor(interval: str, anchor: str | int | None) -> str | int | None:
    """The anchor normalised for ``interval``, or :class:`BadSchedule`.

    daily: no anchor; weekly: a weekday name; monthly: a day of the month 1-28.
    """
    if interval not in INTERVALS:
        raise BadSchedule("SCHEDULE_INTERVAL_INVALID", f"interval must be one of {', '.join(INTERVALS)}")
    if interval == "daily":
        if anchor is not None:
            raise BadSchedule("SCHEDULE_ANCHOR_INVALID", "a daily schedule takes no anchor")
        return None
    if interval == "weekly":
        if not isinstance(anchor, str) or anchor.lower() not in WEEKDAYS:
            raise BadSchedule("SCHEDULE_ANCHOR_INVALID", "a weekly schedule's anchor is a weekday, e.g. monday")
        return anchor.lower()
    if isinstance(anchor, bool) or not isinstance(anchor, int) or not 1 <= anchor <= MAX_MONTH_DAY:
        raise BadSchedule("SCHEDULE_ANCHOR_INVALID",
                          f"a monthly schedule's anchor is a day of the month from 1 to {MAX_MONTH_DAY}")
    return anchor


def _midnight(moment: datetime) -> datetime:
    return to_ms(moment).replace(hour=0, minute=0, second=0, microsecond=0)


def slot_at_or_after(interval: str, anchor: str | int | None, moment: datetime) -> datetime:
    """The first slot (UTC midnight of a slot day) at or after ``moment``."""
    day = _midnight(moment)
    if day < to_ms(moment):
        day += timedelta(days=1)
    if interval == "daily":
        return day
    if interval == "weekly":
        assert isinstance(anchor, str)
        return day + timedelta(days=(WEEKDAYS.index(anchor) - day.weekday()) % 7)
    assert isinstance(anchor, int)
    candidate = day.replace(day=anchor)
    if candidate < day:
        month = Month(day.year, day.month).next()
        candidate = month.start.replace(day=anchor)
    return candidate


def slot_after(interval: str, anchor: str | int | None, slot: datetime) -> datetime:
    """The slot following ``slot``."""
    return slot_at_or_after(interval, anchor, slot + MS)


def slot_label(slot: datetime) -> str:
    """A slot's stable name, part of its payout's idempotency key."""
    return to_ms(slot).strftime("%Y-%m-%d")


_INSTANT_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})", re.ASCII)


def parse_instant(text: str) -> datetime:
    """An RFC 3339 date-time with its offset -> aware UTC, milliseconds; ValueError otherwise.

    The offset is required: a local time names no instant.
    """
    if not _INSTANT_RE.fullmatch(text):
        raise ValueError(f"not an RFC 3339 date-time with offset: {text!r}")
    head, dot, rest = text.partition(".")
    if dot:  # Python reads at most 6 fraction digits: keep milliseconds, the ledger's precision
        digits = re.match(r"[0-9]+", rest).group(0)  # type: ignore[union-attr]
        text = f"{head}.{digits[:3].ljust(3, '0')}{rest[len(digits):]}"
    moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    if moment.year < 1970:
        raise ValueError("before 1970")
    return to_ms(moment)
