"""The write room of settlement: one write plan executed in the batch's transaction.

Turns ``ledger.writes`` values into pymongo bulk writes, collection by collection in
the plan's order, and checks every guard: a conditional update that matches nothing
means the state the decision read is gone. Which guard refused decides what that
means (``ledger/writes.py``): contention (:class:`Conflict`, the runner decides again)
or a broken invariant (:class:`~ledger.writes.BrokenInvariant`, never retried).
"""

from __future__ import annotations

from pymongo import DeleteOne, InsertOne, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database

from ledger.write_plan import WritePlan
from ledger.writes import BUCKET, FLOOR, INVARIANT_GUARDS, WALLET, BrokenInvariant, Delete, Insert, Update, Write


class Conflict(Exception):
    """Another writer changed what this batch read: abort and decide again."""


def execute(db: Database, plan: WritePlan, session: ClientSession) -> None:
    """Execute ``plan`` inside ``session``'s transaction: all of it, or a raised refusal."""
    for name, writes in plan.writes.items():
        if not _bulk(db, name, writes, session):
            raise Conflict(f"{name}: a conditional update matched nothing")
    db.auditlogs.insert_one(plan.audit_block, session=session)
    if plan.head is None:
        raise BrokenInvariant(WALLET, "a write plan without its partition head")
    res = db.partitions.update_one(plan.head.filter, plan.head.change, session=session)
    if res.matched_count != 1:
        raise Conflict("partition sequence moved")
    if not _bulk(db, "wallets", plan.wallets, session):
        # The head guard held, so no other settler is in this partition: the balances
        # are this batch's alone, and one that refuses contradicts the decision.
        raise _broken(plan.wallets)


def _broken(wallets: list[Update]) -> BrokenInvariant:
    guarded = [w for w in wallets if w.guard in INVARIANT_GUARDS]
    guard = next((g for g in (FLOOR, BUCKET) if any(w.guard == g for w in guarded)), WALLET)
    names = ", ".join(f"{w.filter['_id']} ({w.guard})" for w in guarded) or "an unguarded wallet"
    return BrokenInvariant(guard, f"the store refused a balance write the decision approved: {names}")


def _pymongo(write: Write) -> InsertOne | UpdateOne | DeleteOne:
    if isinstance(write, Insert):
        return InsertOne(write.doc)
    if isinstance(write, Update):
        return UpdateOne(write.filter, write.change, upsert=write.upsert)
    if isinstance(write, Delete):
        return DeleteOne(write.filter)
    raise TypeError(f"not a write: {write!r}")


def _bulk(db: Database, name: str, writes: list[Write], session: ClientSession) -> bool:
    """Write ``writes`` in order; False when a conditional update matched nothing."""
    if not writes:
        return True
    res = db[name].bulk_write([_pymongo(w) for w in writes], ordered=True, session=session)
    return res.matched_count + res.upserted_count == sum(1 for w in writes if isinstance(w, Update))
