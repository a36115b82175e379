"""Subscription lifecycle: the periodic tick that renews or expires due periods.

Correctness never depends on only one tick running: expiry is a conditional update
(``status: active`` in the filter) and a renewal job's id is derived from
``renew:<subscriptionId>:<expiresAt>``, so a second tick inserting the same renewal
hits a duplicate key instead of charging twice. The domain refuses a renewal whose
period was already moved (``RENEWAL_STALE``) as a third guard.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database
from pymongo.errors import BulkWriteError

from ledger.operations import Renew
from ledger.timeutil import iso, to_ms, utcnow
from services.jobs import build_job, ring_safely

log = logging.getLogger("purser.subscriptions")

Ringer = Callable[[int, str | None], None]


@dataclass
class TickResult:
    expired: int = 0
    renewals_submitted: int = 0
    renewals_existing: int = 0
    no_plan: int = 0
    scanned: int = 0


def renewal_key(subscription_id: str, period_end: datetime) -> str:
    return f"renew:{subscription_id}:{iso(period_end)}"


def renewal_job_id(key: str) -> str:
    """A job id derived from the renewal key: the database refuses a second one."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def _until(now: datetime) -> dict[str, datetime]:
    """``expiresAt <= now`` written as ``< now + 1 ms``: identical for millisecond dates.

    SecantusDB (0.7.0b3) loses the keys equal to an inclusive upper bound (``$lte``)
    when the ranged field is followed by more fields in a compound index, which the
    ``due_by_renewal`` index is; an exclusive bound is answered correctly everywhere.
    """
    return {"$lt": to_ms(now) + timedelta(milliseconds=1)}


def _expire_filter(now: datetime) -> dict[str, Any]:
    return {"status": "active", "autoRenew": False, "expiresAt": _until(now)}


def expire_lapsed(db: Database, now: datetime) -> int:
    """Expire due subscriptions that will not renew, in one conditional update."""
    now = to_ms(now)
    res = db.subscriptions.update_many(
        _expire_filter(now),
        {"$set": {"status": "expired", "endedReason": "NOT_RENEWED", "endedAt": now}},
    )
    return res.modified_count


def tick(
    db: Database,
    *,
    now: datetime | None = None,
    chunk: int = 500,
    partitions: int,
    ring: Ringer,
) -> TickResult:
    """Expire lapsed periods and submit renewals for due auto-renewing ones."""
    now = to_ms(now or utcnow())
    result = TickResult(expired=expire_lapsed(db, now))
    last: tuple[datetime, str] | None = None
    while True:
        subs = _due_renewals(db, now, last, chunk)
        if not subs:
            break
        last = (subs[-1]["expiresAt"], subs[-1]["_id"])
        result.scanned += len(subs)
        _renew_chunk(db, subs, now, partitions, ring, result)
        if len(subs) < chunk:
            break
    return result


_DUE_ORDER = [("expiresAt", 1), ("_id", 1)]


def _due_renewals(db: Database, now: datetime, last: tuple[datetime, str] | None,
                  chunk: int) -> list[dict[str, Any]]:
    """The next ``chunk`` due auto-renewing subscriptions after ``last`` in (expiresAt, _id) order.

    Keyset pagination as two plain index ranges (the rest of ``last``'s instant,
    then later instants) rather than one top-level ``$or``, which some planners
    (SecantusDB's among them) answer with a collection scan.
    """
    base: dict[str, Any] = {"status": "active", "autoRenew": True}
    if last is None:
        return list(db.subscriptions.find({**base, "expiresAt": _until(now)}).sort(_DUE_ORDER).limit(chunk))
    expires_at, sub_id = last
    subs = list(db.subscriptions.find({**base, "expiresAt": expires_at, "_id": {"$gt": sub_id}})
                .sort(_DUE_ORDER).limit(chunk))
    if len(subs) < chunk:
        subs += list(db.subscriptions.find({**base, "expiresAt": {"$gt": expires_at, **_until(now)}})
                     .sort(_DUE_ORDER).limit(chunk - len(subs)))
    return subs


def _renew_chunk(db: Database, subs: list[dict[str, Any]], now: datetime, partitions: int,
                 ring: Ringer, result: TickResult) -> None:
    creators = sorted({s["creatorId"] for s in subs})
    offered = {p["_id"] for p in db.plans.find({"_id": {"$in": creators}, "isActive": True}, {"_id": 1})}
    jobs = []
    for sub in subs:
        if sub["creatorId"] not in offered:
            res = db.subscriptions.update_one(
                {"_id": sub["_id"], "status": "active", "expiresAt": sub["expiresAt"]},
                {"$set": {"status": "expired", "endedReason": "NO_PLAN", "endedAt": now}})
            result.no_plan += res.modified_count
            continue
        key = renewal_key(sub["_id"], sub["expiresAt"])
        op = Renew(sub["subscriberId"], sub["_id"], sub["expiresAt"])
        jobs.append(build_job(op, sub["subscriberId"], partitions, None, key, job_id=renewal_job_id(key)))
    if not jobs:
        return
    inserted = len(jobs)
    try:
        db.jobs.insert_many(jobs, ordered=False)
    except BulkWriteError as exc:
        dupes = [e for e in exc.details.get("writeErrors", []) if e.get("code") == 11000]
        if len(dupes) != len(exc.details.get("writeErrors", [])):
            raise
        inserted -= len(dupes)
        result.renewals_existing += len(dupes)
    result.renewals_submitted += inserted
    for partition in sorted({j["partition"] for j in jobs}):
        ring_safely(ring, partition, None)
