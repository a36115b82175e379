"""Scheduled payouts: a creator's standing order, and the beat tick that places one payout per slot.

A schedule (``payout_schedules``, ``_id`` = the user) names its interval, anchor and
minimum and the next slot due. The tick takes due schedules in ``nextSlot`` order and,
per slot, either accepts a ``payout`` job for the whole spendable balance through the
ordinary path (``services.jobs.accept_job``: hold, submission, provider events) or skips
with a reason. The job id and its idempotency key derive from ``payout-schedule:<user>:
<slot>``, so two beats, or a beat restarted between accepting and recording, place at
most one payout per creator and slot: the second insert is a duplicate key. What each
slot did is recorded in ``payout_schedule_runs`` (``_id`` = ``<user>:<slot>``, insert
once), then the slot moves on under a guard on its old value.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from ledger.operations import Payout
from ledger.periods import MS, check_anchor, slot_after, slot_label
from ledger.states import WalletStatus
from ledger.timeutil import iso, to_ms, utcnow
from services.jobs import accept_job, ring_safely

log = logging.getLogger("purser.payout_schedules")

Ringer = Callable[[int, str | None], None]

# Why a slot placed no payout (recorded on its run).
FROZEN, IN_DEBT, BELOW_MINIMUM, NO_WALLET = "WALLET_FROZEN", "IN_DEBT", "BELOW_MINIMUM", "WALLET_NOT_FOUND"


def slot_key(user_id: str, slot: datetime) -> str:
    return f"payout-schedule:{user_id}:{slot_label(slot)}"


def slot_job_id(key: str) -> str:
    """The payout's id for a slot: the database refuses a second one."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def schedule_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {"userId": doc["_id"], "interval": doc["interval"], "anchor": doc.get("anchor"),
            "minimum": doc["minimum"], "nextSlot": iso(doc["nextSlot"]), "active": doc["active"],
            "lastRun": doc.get("lastRun")}


def put_schedule(db: Database, user_id: str, interval: str, anchor: str | int | None, minimum: int,
                 now: datetime) -> dict[str, Any]:
    """Create or replace ``user_id``'s schedule (``BadSchedule`` for an impossible one); the first
    slot is the next one strictly after now, so setting a schedule never pays at once."""
    anchor = check_anchor(interval, anchor)
    now = to_ms(now)
    doc = {"interval": interval, "anchor": anchor, "minimum": minimum, "active": True,
           "nextSlot": slot_after(interval, anchor, now), "updatedAt": now}
    db.payout_schedules.update_one({"_id": user_id}, {"$set": doc, "$setOnInsert": {"createdAt": now}},
                                             upsert=True)
    return {"_id": user_id, **doc}


def get_schedule(db: Database, user_id: str) -> dict[str, Any] | None:
    return db.payout_schedules.find_one({"_id": user_id, "active": True})


def delete_schedule(db: Database, user_id: str, now: datetime) -> bool:
    """Stop the schedule; False when there was none. A slot already placed still pays."""
    res = db.payout_schedules.update_one({"_id": user_id, "active": True},
                                                    {"$set": {"active": False, "updatedAt": to_ms(now)}})
    return res.modified_count == 1


def runs(db: Database, user_id: str, limit: int = 20) -> list[dict[str, Any]]:
    docs = db.payout_schedule_runs.find({"userId": user_id}).sort("slot", -1).limit(limit)
    return [{"slot": iso(d["slot"]), "outcome": d["outcome"], "reason": d.get("reason"),
             "payoutId": d.get("payoutId"), "amount": d.get("amount")} for d in docs]


@dataclass
class ScheduleTick:
    placed: int = 0
    existing: int = 0  # the slot's payout was already placed (a second beat, a restart)
    skipped: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"placed": self.placed, "existing": self.existing, "skipped": dict(self.skipped)}


def _decide(wallet: dict[str, Any] | None, schedule: dict[str, Any], floor: int) -> tuple[int, str | None]:
    """(amount, None) to pay the whole spendable balance, or (0, reason) to skip the slot."""
    if wallet is None:
        return 0, NO_WALLET
    if wallet.get("status") == WalletStatus.FROZEN:
        return 0, FROZEN
    if wallet["balance"] < 0:
        return 0, IN_DEBT
    if wallet["balance"] < max(schedule["minimum"], floor):
        return 0, BELOW_MINIMUM
    return wallet["balance"], None


def _run_slot(db: Database, schedule: dict[str, Any], slot: datetime, *, floor: int, partitions: int,
              ring: Ringer, result: ScheduleTick) -> dict[str, Any]:
    user_id = schedule["_id"]
    key = slot_key(user_id, slot)
    job_id = slot_job_id(key)
    if db.jobs.find_one({"_id": job_id}, {"_id": 1}) is not None:
        result.existing += 1
        return {"outcome": "placed", "payoutId": job_id}
    amount, reason = _decide(db.wallets.find_one({"_id": user_id}, {"balance": 1, "status": 1}), schedule, floor)
    if reason is not None:
        result.skipped[reason] = result.skipped.get(reason, 0) + 1
        return {"outcome": "skipped", "reason": reason}
    try:
        accept_job(db, Payout(user_id, amount, job_id), user_id, partitions=partitions, ring=ring, key=key,
                   job_id=job_id)
        result.placed += 1
    except DuplicateKeyError:  # placed by a concurrent tick: ring in case its doorbell was lost
        job = db.jobs.find_one({"_id": job_id}, {"partition": 1})
        if job is not None:
            ring_safely(ring, job["partition"], None, job_id)
        result.existing += 1
    return {"outcome": "placed", "payoutId": job_id, "amount": amount}


def tick(db: Database, *, floor: int, partitions: int, ring: Ringer, now: datetime | None = None,
         chunk: int = 200) -> ScheduleTick:
    """Place (or skip, with the reason) every due slot of every active schedule."""
    now = to_ms(now or utcnow())
    result = ScheduleTick()
    for _ in range(1000):  # bounded: each pass moves every due schedule at least one slot on
        due = list(db.payout_schedules.find({"active": True, "nextSlot": {"$lt": now + MS}})
                   .sort("nextSlot", 1).limit(chunk))
        if not due:
            break
        for schedule in due:
            slot = schedule["nextSlot"]
            run = _run_slot(db, schedule, slot, floor=floor, partitions=partitions, ring=ring, result=result)
            record = {"_id": f"{schedule['_id']}:{slot_label(slot)}", "userId": schedule["_id"], "slot": slot,
                      "at": now, **run}
            try:
                db.payout_schedule_runs.insert_one(record)
            except DuplicateKeyError:
                pass  # recorded by the tick that placed it
            # A beat that was down for several slots pays once, not once per missed slot.
            following = max(slot_after(schedule["interval"], schedule.get("anchor"), slot),
                            slot_after(schedule["interval"], schedule.get("anchor"), now))
            db.payout_schedules.update_one(
                {"_id": schedule["_id"], "nextSlot": slot},
                {"$set": {"nextSlot": following,
                          "lastRun": {k: (iso(v) if isinstance(v, datetime) else v)
                                      for k, v in record.items() if k != "_id"}}})
    return result
