"""Payouts around the ledger: reads for the API, submission to the provider, the beat tick.

The ledger (``ledger/money_out.py``, settled by ``services/settlement.py``) owns the
money: a ``payout`` job holds the coins and inserts the payout document (``pending``);
``payout_event`` jobs post, void or return them. This module only moves a payout
from ``pending`` to ``submitted`` once the provider accepted it, and turns what the
provider says (or the hold's age) into ``payout_event`` jobs. It never voids on a
guess: a lost answer leaves the payout as it is, to be resolved by asking the
provider for its status, because the provider may have paid.

Two writers touch a payout document outside settlement, both with conditional
updates on ``{_id, status: pending}``: the submitter stamps ``submitAttemptedAt``
before it calls the provider (refused while ``expiring`` is set), and the expiry
sets ``expiring`` only while the last attempt is the one it inspected, so a hold is
never expired while a submission of it may be in flight.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from ledger.operations import PayoutEvent
from ledger.states import OPEN_PAYOUT_STATUSES, PayoutStatus
from ledger.timeutil import iso, to_ms, utcnow
from services import operator_audit
from services.jobs import accept_job, ring_safely
from services.payout_provider import ACCEPTED, REFUSED, PayoutProvider, ProviderUnavailable
from services.queries import decode_cursor, encode_cursor

log = logging.getLogger("purser.payouts")

Ringer = Callable[[int, str | None], None]

# Longer than any submission request can take (services/payout_provider.REQUEST_TIMEOUT):
# an attempt stamped earlier than this is over, whatever its answer was.
SUBMISSION_WINDOW = timedelta(seconds=60)

# What the provider may say of a payout that ends it: the payout_event of the same name.
FINAL_PROVIDER_STATUSES = (PayoutStatus.PAID.value, PayoutStatus.FAILED.value)

# What a submission did (submit_payout's answer).
SUBMITTED, NOT_PENDING, LOST, REFUSED_VOIDED, NO_PROVIDER = (
    "submitted", "not_pending", "lost", "refused", "no_provider")


# --- reads for the API ------------------------------------------------------------------


def payout_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {"payoutId": doc["_id"], "userId": doc["userId"], "amount": doc["amount"],
            "status": doc["status"], "jobId": doc.get("jobId"), "createdAt": iso(doc["createdAt"]),
            "updatedAt": iso(doc["updatedAt"]),
            "events": [{"eventId": e.get("eventId"), "status": e.get("status"), "jobId": e.get("jobId"),
                        "at": iso(e["at"]) if e.get("at") else None} for e in doc.get("events", [])]}


def get_payout(db: Database, payout_id: str) -> dict[str, Any] | None:
    return db.payouts.find_one({"_id": payout_id})


def user_payouts(db: Database, user_id: str, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of ``user_id``'s payouts, newest first (index userId, createdAt), and the next
    cursor; ``BadCursor`` (services.queries) for a cursor this API did not issue."""
    query: dict[str, Any] = {"userId": user_id}
    if cursor:
        moment, doc_id = decode_cursor(cursor)
        query["$or"] = [{"createdAt": {"$lt": moment}}, {"createdAt": moment, "_id": {"$lt": doc_id}}]
    docs = list(db.payouts.find(query).sort([("createdAt", -1), ("_id", -1)]).limit(limit + 1))
    more = len(docs) > limit
    docs = docs[:limit]
    return docs, (encode_cursor(docs[-1]["createdAt"], docs[-1]["_id"]) if more and docs else None)


def payouts_by_status(db: Database, status: PayoutStatus, limit: int,
                      cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the payouts in ``status``, longest unchanged first (index status_age: the
    stuck ones lead), and the next cursor; ``BadCursor`` for a cursor this did not issue."""
    query: dict[str, Any] = {"status": PayoutStatus(status)}
    if cursor:
        moment, doc_id = decode_cursor(cursor)
        query["$or"] = [{"updatedAt": {"$gt": moment}}, {"updatedAt": moment, "_id": {"$gt": doc_id}}]
    docs = list(db.payouts.find(query).sort([("updatedAt", 1), ("_id", 1)]).limit(limit + 1))
    more = len(docs) > limit
    docs = docs[:limit]
    return docs, (encode_cursor(docs[-1]["updatedAt"], docs[-1]["_id"]) if more and docs else None)


def held_amount(db: Database, user_id: str) -> int:
    """Coins of ``user_id`` held by open payouts (``pending``/``submitted``), on the userId index."""
    docs = db.payouts.find(
        {"userId": user_id, "status": {"$in": [str(s) for s in OPEN_PAYOUT_STATUSES]}}, {"amount": 1})
    return sum(doc["amount"] for doc in docs)


# --- payout events as jobs --------------------------------------------------------------


def event_job_id(key: str) -> str:
    """A job id derived from a deterministic event key: the database refuses a second one."""
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def accept_event(db: Database, user_id: str, payout_id: str, event: str, key: str, *, partitions: int,
                 ring: Ringer) -> bool:
    """Store a ``payout_event`` job whose id derives from ``key`` (so a doubled tick applies it
    once) and ring its partition; False when that job already existed."""
    op = PayoutEvent(user_id, payout_id, event, key)
    try:
        accept_job(db, op, user_id, partitions=partitions, ring=ring, key=key, job_id=event_job_id(key))
    except DuplicateKeyError:
        # Already stored by an earlier tick: ring anyway, in case its doorbell was lost.
        job = db.jobs.find_one({"_id": event_job_id(key)}, {"partition": 1})
        if job is not None:
            ring_safely(ring, job["partition"], None, job["_id"])
        return False
    log.info("payout event job accepted", extra={"payoutId": payout_id, "event": event, "key": key})
    return True


# --- submission -------------------------------------------------------------------------


def mark_submitted(db: Database, payout_id: str, now: datetime | None = None) -> bool:
    """``pending -> submitted`` once the provider has the payout; False when it is no longer pending."""
    now = to_ms(now or utcnow())
    res = db.payouts.update_one(
        {"_id": payout_id, "status": PayoutStatus.PENDING},
        {"$set": {"status": PayoutStatus.SUBMITTED, "updatedAt": now, "submittedAt": now}})
    return res.modified_count == 1


def submit_payout(db: Database, payout_id: str, provider: PayoutProvider | None, *, partitions: int, ring: Ringer,
                  now: datetime | None = None) -> str:
    """Send a pending payout to the provider (idempotent on its id); what happened.

    ``SUBMITTED``: accepted and marked. ``LOST``: no usable answer, the payout stays
    ``pending`` with the attempt stamped (retry, or the tick asks for its status).
    ``REFUSED_VOIDED``: the provider refused it for good, so a ``failed`` event job
    voids the hold. ``NOT_PENDING``: nothing to do (already submitted, settled by an
    event, or being expired).
    """
    now = to_ms(now or utcnow())
    doc = db.payouts.find_one({"_id": payout_id})
    if doc is None or doc["status"] != PayoutStatus.PENDING or doc.get("expiring"):
        return NOT_PENDING
    if provider is None:
        log.error("no payout provider configured (PAYOUT_PROVIDER_URL); the payout stays pending",
                  extra={"payoutId": payout_id})
        return NO_PROVIDER
    claim = db.payouts.update_one(
        {"_id": payout_id, "status": PayoutStatus.PENDING, "expiring": {"$ne": True}},
        {"$set": {"submitAttemptedAt": now}, "$inc": {"submitAttempts": 1}})
    if claim.modified_count != 1:
        return NOT_PENDING
    answer = provider.submit(payout_id, doc["userId"], doc["amount"])
    if answer == ACCEPTED:
        mark_submitted(db, payout_id, now)
        log.info("payout submitted", extra={"payoutId": payout_id, "amount": doc["amount"]})
        return SUBMITTED
    if answer == REFUSED:
        accept_event(db, doc["userId"], payout_id, PayoutStatus.FAILED.value, f"refused:{payout_id}",
                     partitions=partitions, ring=ring)
        return REFUSED_VOIDED
    return LOST


# --- an operator asks the provider ------------------------------------------------------


class PayoutNotOpen(Exception):
    """The payout is already final: there is nothing to ask the provider."""


@dataclass(frozen=True)
class Asked:
    provider_status: str  # paid, failed, pending or unknown
    resolved: int  # payout_event jobs accepted from the answer (0 when the tick had done it)


def ask_provider(db: Database, payout_id: str, provider: PayoutProvider | None, actor: dict[str, str],
                 request_id: str | None, *, partitions: int, ring: Ringer,
                 submission: operator_audit.Submission | None = None, now: datetime | None = None) -> Asked | None:
    """What the tick does for one payout, now, for an operator: ask its status and apply the answer.

    The question and the answer are recorded in the operator chain first (with the
    console form's one-time key: a second submit raises ``AlreadyDone`` and changes
    nothing); a final answer then becomes the same ``payout_event`` job the tick would
    accept (same key, so the two never apply it twice). ``None``: no such payout;
    :class:`PayoutNotOpen`; ``ProviderUnavailable`` when there is no provider or it
    does not answer (nothing recorded).
    """
    now = to_ms(now or utcnow())
    doc = db.payouts.find_one({"_id": payout_id})
    if doc is None:
        return None
    if doc["status"] not in OPEN_PAYOUT_STATUSES:
        raise PayoutNotOpen(payout_id)
    if provider is None:
        raise ProviderUnavailable("no payout provider configured (PAYOUT_PROVIDER_URL)")
    status = provider.status(payout_id)

    def apply(session: Any) -> operator_audit.Change | None:
        before = db.payouts.find_one({"_id": payout_id}, {"status": 1}, session=session)
        if before is None:
            return None
        return operator_audit.Change({"status": before["status"]},
                                     {"status": before["status"], "providerStatus": status})

    done = operator_audit.record(db, "payout.ask_provider", actor, {"type": "payout", "id": payout_id},
                                 request_id, apply, submission=submission)
    if done is None:
        return None
    result = TickResult()
    _apply_status(db, doc, status, partitions, ring, result, now)
    return Asked(status, result.resolved)


# --- the beat tick ----------------------------------------------------------------------


@dataclass
class TickResult:
    resolved: int = 0  # payout_event jobs accepted from a status lookup
    submitted: int = 0  # pending payouts (re)submitted and accepted
    expired: int = 0  # expiry jobs accepted
    in_doubt: list[str] = field(default_factory=list)  # submitted payouts the provider does not know
    provider_down: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"resolved": self.resolved, "submitted": self.submitted, "expired": self.expired,
                "inDoubt": self.in_doubt, "providerDown": self.provider_down}


def _apply_status(db: Database, doc: dict[str, Any], status: str, partitions: int, ring: Ringer, result: TickResult,
                  now: datetime) -> None:
    if status in FINAL_PROVIDER_STATUSES:
        if accept_event(db, doc["userId"], doc["_id"], status, f"status:{doc['_id']}:{status}",
                        partitions=partitions, ring=ring):
            result.resolved += 1
    elif status == PayoutStatus.PENDING and doc["status"] == PayoutStatus.PENDING:
        mark_submitted(db, doc["_id"], now)  # the provider has it: the lost answer was a yes


def _expire(db: Database, doc: dict[str, Any], partitions: int, ring: Ringer, result: TickResult) -> None:
    guard: dict[str, Any] = {"_id": doc["_id"], "status": PayoutStatus.PENDING,
                             "submitAttemptedAt": doc.get("submitAttemptedAt")}
    if doc.get("submitAttemptedAt") is None:
        guard["submitAttemptedAt"] = {"$exists": False}
    if db.payouts.update_one(guard, {"$set": {"expiring": True}}).modified_count != 1:
        return  # a submission started meanwhile: look again next tick
    if accept_event(db, doc["userId"], doc["_id"], PayoutStatus.EXPIRED.value, f"expire:{doc['_id']}",
                    partitions=partitions, ring=ring):
        result.expired += 1


def tick(db: Database, provider: PayoutProvider | None, *, partitions: int, ring: Ringer, resolve_after: timedelta,
         hold_ttl: timedelta, now: datetime | None = None, chunk: int = 200) -> TickResult:
    """Resolve payouts in doubt by asking the provider, resubmit pending ones, expire old holds.

    * ``submitted`` for longer than ``resolve_after``: the provider's status becomes a
      ``paid``/``failed`` event job keyed ``status:<payoutId>:<status>`` (applied once).
    * ``pending`` for longer than ``resolve_after``: never tried -> submit (or expire once
      older than ``hold_ttl``); tried -> ask the provider: it has it -> mark submitted or
      resolve; it never got it -> submit again, or expire once older than ``hold_ttl``.
    * The provider unreachable -> nothing is concluded; the next tick tries again.
    """
    now = to_ms(now or utcnow())
    result = TickResult()
    if provider is None:
        log.error("no payout provider configured (PAYOUT_PROVIDER_URL): payouts are not submitted")
        return result
    cutoff = now - resolve_after
    try:
        for doc in db.payouts.find({"status": PayoutStatus.SUBMITTED, "updatedAt": {"$lt": cutoff}}
                                   ).sort("updatedAt", 1).limit(chunk):
            status = provider.status(doc["_id"])
            if status == "unknown":
                # Accepted once, unknown now: only an operator can say (docs/operations.md).
                log.error("payout in doubt: submitted but unknown to the provider", extra={"payoutId": doc["_id"]})
                result.in_doubt.append(doc["_id"])
            else:
                _apply_status(db, doc, status, partitions, ring, result, now)
        for doc in db.payouts.find({"status": PayoutStatus.PENDING, "updatedAt": {"$lt": cutoff}}
                                   ).sort("updatedAt", 1).limit(chunk):
            too_old = now - doc["createdAt"] > hold_ttl
            attempted = doc.get("submitAttemptedAt")
            if attempted is None:
                if too_old:
                    _expire(db, doc, partitions, ring, result)
                elif submit_payout(db, doc["_id"], provider, partitions=partitions, ring=ring, now=now) == SUBMITTED:
                    result.submitted += 1
                continue
            if now - attempted < SUBMISSION_WINDOW:
                continue  # an attempt may still be in flight
            status = provider.status(doc["_id"])
            if status != "unknown":
                _apply_status(db, doc, status, partitions, ring, result, now)
            elif too_old:
                _expire(db, doc, partitions, ring, result)
            elif submit_payout(db, doc["_id"], provider, partitions=partitions, ring=ring, now=now) == SUBMITTED:
                result.submitted += 1
    except ProviderUnavailable as exc:
        log.warning("payout provider unreachable; payouts stay as they are", extra={"error": str(exc)})
        result.provider_down = True
    return result
