"""Subscription lifecycle: creators' plans, cancellations, and the periodic tick that
renews or expires due periods.

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

from pymongo.client_session import ClientSession
from pymongo.database import Database

from ledger.operations import Renew
from ledger.states import SubscriptionStatus
from ledger.timeutil import iso, to_ms, utcnow
from services import operator_audit
from services.jobs import Intake, accept_jobs

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
    return {"status": SubscriptionStatus.ACTIVE, "autoRenew": False, "expiresAt": _until(now)}


def expire_lapsed(db: Database, now: datetime) -> int:
    """Expire due subscriptions that will not renew, in one conditional update."""
    now = to_ms(now)
    res = db.subscriptions.update_many(
        _expire_filter(now),
        {"$set": {"status": SubscriptionStatus.EXPIRED, "endedReason": "NOT_RENEWED", "endedAt": now}},
    )
    return res.modified_count


def tick(
    db: Database, *,
    now: datetime | None = None,
    chunk: int = 500,
    partitions: int,
    ring: Ringer) -> TickResult:
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
    base: dict[str, Any] = {"status": SubscriptionStatus.ACTIVE, "autoRenew": True}
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
    intakes = []
    for sub in subs:
        if sub["creatorId"] not in offered:
            res = db.subscriptions.update_one(
                {"_id": sub["_id"], "status": SubscriptionStatus.ACTIVE, "expiresAt": sub["expiresAt"]},
                {"$set": {"status": SubscriptionStatus.EXPIRED, "endedReason": "NO_PLAN", "endedAt": now}})
            result.no_plan += res.modified_count
            continue
        key = renewal_key(sub["_id"], sub["expiresAt"])
        op = Renew(sub["subscriberId"], sub["_id"], sub["expiresAt"])
        intakes.append(Intake(op, sub["subscriberId"], key, renewal_job_id(key)))
    if not intakes:
        return
    # Deterministic ids: a doubled tick finds its renewals stored and counts them as existing.
    batch = accept_jobs(db, intakes, partitions=partitions, ring=ring)
    result.renewals_submitted += len(batch.stored)
    result.renewals_existing += batch.existing


# --- what fans and creators do through the API ------------------------------------------


def set_plan(db: Database, creator_id: str, price: int, period_days: int, actor: dict[str, str],
             request_id: str | None) -> dict[str, Any]:
    """Set ``creator_id``'s plan (price per period), audited in the operator chain; the plan's fields."""
    fields = {"price": price, "periodDays": period_days, "isActive": True}

    def apply(session: ClientSession) -> operator_audit.Change:
        now = utcnow()
        before = db.plans.find_one({"_id": creator_id}, {"_id": 0, "price": 1, "periodDays": 1, "isActive": 1},
                                   session=session)
        db.plans.update_one({"_id": creator_id},
                            {"$set": dict(fields, updatedAt=now), "$setOnInsert": {"createdAt": now}},
                            upsert=True, session=session)
        return operator_audit.Change(before, dict(fields))

    operator_audit.record(db, "plan.set", actor, {"type": "plan", "id": creator_id}, request_id, apply)
    return fields


def offers_plan(db: Database, creator_id: str) -> bool:
    """True when ``creator_id`` has an active plan one can subscribe to."""
    return db.plans.find_one({"_id": creator_id, "isActive": True}, {"_id": 1}) is not None


def cancel(db: Database, subscription_id: str, subscriber_id: str, actor: dict[str, str],
           request_id: str | None) -> dict[str, Any] | None:
    """Stop auto-renewal of the subscriber's active subscription (access lasts until
    ``expiresAt``), audited; the subscription, or None when it is not theirs or not active."""
    mine = {"_id": subscription_id, "subscriberId": subscriber_id, "status": SubscriptionStatus.ACTIVE}

    def apply(session: ClientSession) -> operator_audit.Change | None:
        before = db.subscriptions.find_one(mine, {"autoRenew": 1, "cancelledAt": 1}, session=session)
        if before is None:
            return None
        after = {"autoRenew": False, "cancelledAt": utcnow()}
        db.subscriptions.update_one(mine, {"$set": after}, session=session)
        return operator_audit.Change({"autoRenew": before.get("autoRenew"), "cancelledAt": before.get("cancelledAt")},
                                     after)

    done = operator_audit.record(db, "subscription.cancel", actor, {"type": "subscription", "id": subscription_id},
                                 request_id, apply)
    if done is None:
        return None
    return db.subscriptions.find_one({"_id": subscription_id})


def subscriptions_of(db: Database, subscriber_id: str, limit: int = 200) -> list[dict[str, Any]]:
    """The subscriber's subscriptions, newest first."""
    return list(db.subscriptions.find({"subscriberId": subscriber_id}).sort("createdAt", -1).limit(limit))
