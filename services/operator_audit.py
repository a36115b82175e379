"""The operators' audit chain: freezes, role changes, plan changes, cancellations.

Every such action is applied and recorded in ONE MongoDB transaction: the change
itself (done by the caller's ``apply``, which gets the session), one sealed entry in
``auditlogs`` under partition :data:`ledger.audit.OPERATOR_CHAIN` (``-1``) and the
bump of that chain's head in ``partitions``. Either all three commit or none does,
so an operator action is never applied without its entry, nor recorded without
having happened.

The head update carries a guard on the ``auditSeq`` it read: two operator actions
at once both append ``seq + 1``; the second to write conflicts and is re-run by
``with_transaction`` (or by the short loop here), reading the new head. Every query
is a point read on ``_id`` or on the ``(partition, seq)`` unique index.

Admin credits are not recorded here: they are jobs, audited by settlement in their
partition's chain with actor type ``admin``.

An action taken from the operator console also carries a :class:`Submission`: the
operator's reason (stored in the entry) and the form's one-time key, claimed in
``form_keys`` inside the same transaction, so a form submitted twice applies once and
the second submission raises :class:`AlreadyDone`. (A console action that makes a job,
a refund, claims its key on the job instead, like any API request.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from ledger import audit
from ledger.states import Role
from ledger.timeutil import utcnow

OPERATOR_KIND = "operator"
MAX_ATTEMPTS = 8
FORM_KEY_PREFIX = "console:"  # kept apart from API keys where a console form makes a job (refunds)


@dataclass(frozen=True)
class Change:
    """What ``apply`` did: the target's state before and after, and a value for the caller."""

    before: dict[str, Any] | None
    after: dict[str, Any] | None
    result: Any = None


@dataclass(frozen=True)
class Submission:
    """A console form's part of an action: why, and the key that makes a second submit a no-op."""

    reason: str
    key: str  # generated when the form was rendered
    ttl_hours: int  # how long the key is remembered (IDEMPOTENCY_TTL_HOURS)


class AlreadyDone(Exception):
    """This form's key was already used: the action it asked for was applied then."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(record.get("action"))
        self.record = record


class _HeadMoved(Exception):
    """The chain head changed between this transaction's read and its write."""


class _NoTarget(Exception):
    """``apply`` found no target: abort, so a claimed form key is not kept for nothing."""


def ensure_head(db: Database, chain: int = audit.OPERATOR_CHAIN) -> None:
    """Create the chain's head document once (a read when it exists)."""
    if db.partitions.find_one({"_id": chain}, {"_id": 1}) is None:
        try:
            db.partitions.update_one(
                {"_id": chain},
                {"$setOnInsert": {"seq": 0, "auditSeq": 0, "auditHead": audit.GENESIS}},
                upsert=True)
        except DuplicateKeyError:  # created by a concurrent first action
            pass


def actor_of(user_id: str, role: str) -> dict[str, str]:
    """The audit actor of an API caller: ``admin`` for admins, else ``user``."""
    return {"type": "admin" if role == Role.ADMIN else "user", "id": user_id}


def _append(db: Database, session: ClientSession, body: dict[str, Any], chain: int) -> dict[str, Any]:
    head = db.partitions.find_one({"_id": chain}, session=session)
    if head is None:
        raise _HeadMoved("chain head missing")
    seq = head["auditSeq"] + 1
    entry = audit.seal(dict(body, partition=chain, seq=seq), head["auditHead"])
    db.auditlogs.insert_one(entry, session=session)
    res = db.partitions.update_one(
        {"_id": chain, "auditSeq": head["auditSeq"], "auditHead": head["auditHead"]},
        {"$set": {"auditSeq": seq, "auditHead": entry["hash"], "lastAuditAt": body["createdAt"]},
         "$inc": {"seq": 1}},
        session=session)
    if res.modified_count != 1:
        raise _HeadMoved("operator chain head moved")
    return entry


def _claim_form_key(db: Database, session: ClientSession, owner_id: str, action: str, target_id: str,
                    submission: Submission) -> None:
    key = FORM_KEY_PREFIX + submission.key
    # Not a job: these keys live in their own small collection (unique owner+key, TTL on
    # expiresAt), which an operator's rare actions can afford; jobs hold the API's keys.
    found = db.form_keys.find_one({"ownerId": owner_id, "key": key}, session=session)
    if found is not None:
        raise AlreadyDone(found)
    now = utcnow()
    db.form_keys.insert_one({
        "ownerId": owner_id, "key": key, "fingerprint": f"{action}:{target_id}", "jobId": None,
        "action": action, "targetId": target_id, "createdAt": now,
        "expiresAt": now + timedelta(hours=submission.ttl_hours)}, session=session)


def record(db: Database, action: str, actor: dict[str, str], target: dict[str, str], request_id: str | None,
           apply: Callable[[ClientSession], Change | None], *,
           submission: Submission | None = None,
           chain: int = audit.OPERATOR_CHAIN) -> tuple[Change, dict[str, Any]] | None:
    """Apply an operator action and append its audit entry, atomically.

    ``apply(session)`` makes the change with ``session`` and returns a :class:`Change`
    (the target's ``before`` and ``after``), or ``None`` when the target does not exist:
    then nothing is written and ``None`` is returned. Otherwise returns the change and
    the sealed entry ``{partition: chain, seq, kind: "operator", action, actor, target,
    before, after, requestId, createdAt, prevHash, hash}`` (plus ``reason`` with a
    ``submission``, whose key is claimed in the same transaction: :class:`AlreadyDone`).
    """
    ensure_head(db, chain)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        holder: dict[str, Any] = {}

        def body(session: ClientSession, holder: dict[str, Any] = holder) -> None:
            holder.clear()
            if submission is not None:
                _claim_form_key(db, session, actor["id"], action, target["id"], submission)
            change = apply(session)
            if change is None:
                raise _NoTarget
            holder["change"] = change
            fields = {"kind": OPERATOR_KIND, "action": action, "actor": dict(actor),
                      "target": {"type": target["type"], "id": target["id"]},
                      "before": change.before, "after": change.after,
                      "requestId": request_id, "createdAt": utcnow()}
            if submission is not None:
                fields["reason"] = submission.reason
            holder["entry"] = _append(db, session, fields, chain)

        try:
            with db.client.start_session() as session:
                session.with_transaction(body)
        except _NoTarget:
            return None
        except (_HeadMoved, DuplicateKeyError):
            # Another operator action took this seq first (a conflict with_transaction
            # did not label transient): read the head again.
            if attempt == MAX_ATTEMPTS:
                raise
            time.sleep(0.002 * attempt)
            continue
        return holder["change"], holder["entry"]
    raise RuntimeError("unreachable")
