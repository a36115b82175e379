"""Refunds for the web tier: what an admin refund is routed by, and an original's refunds.

A refund is settled by the partition of its *debtor*, the wallet that received the
original's main credit (the creator of an unlock, gift or subscription charge, the
receiver of a transfer), so every refund of one original is decided by one settler,
in order, and their sum cannot pass the original (``ledger/money_out.py``). The
debtor is read here, once, from the settled original's result.

An original's refunds (and a top-up's chargebacks) are read on the sparse
``jobs.refund_of`` index (a refund's job is its ledger record, ``services/journal.py``):
one range, whatever the history's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from ledger.operations import REFUND_DEBTORS
from ledger.states import JobStatus
from ledger.timeutil import iso
from services import journal

# The result field naming the wallet that received the original's main credit (each
# refundable operation class declares it: ``refund_debtor``).
DEBTOR_FIELD: dict[str, str] = REFUND_DEBTORS
# Jobs whose view lists what was given back: refundable ones, and top-ups (chargebacks).
REVERSIBLE = frozenset(DEBTOR_FIELD) | {"topup"}
# Ids per $in range: the embedded store's $in cost grows with the square of its length.
IN_CHUNK = 25


@dataclass(frozen=True)
class RefundTarget:
    job_id: str
    kind: str
    debtor: str | None  # None: not refundable (its type, or not settled)

    @property
    def refundable(self) -> bool:
        return self.debtor is not None


def refund_target(db: Database, job_id: str) -> RefundTarget | None:
    """The original job an admin refund names, or None when there is no such job."""
    job = db.jobs.find_one({"_id": job_id}, {"type": 1, "status": 1, "result": 1})
    if job is None:
        return None
    kind = job.get("type", "")
    field = DEBTOR_FIELD.get(kind)
    debtor = (job.get("result") or {}).get(field) if field else None
    if job.get("status") != JobStatus.SETTLED or not isinstance(debtor, str):
        debtor = None
    return RefundTarget(job_id, kind, debtor)


def refunds_by_original(db: Database, job_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The refunds and chargebacks settled against each of ``job_ids`` (``$in`` ranges), oldest first."""
    found: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in job_ids}
    txs = (tx for start in range(0, len(job_ids), IN_CHUNK)
           for tx in journal.find(db, {"refundOf": {"$in": job_ids[start:start + IN_CHUNK]}},
                                  ["type", "refundOf", "refundLegs", "reason", "createdAt"]))
    for tx in txs:
        found.setdefault(tx["refundOf"], []).append(
            {"jobId": tx["_id"], "type": tx["type"], "amount": sum(row["amount"] for row in tx.get("refundLegs", [])),
             "reason": tx.get("reason"), "createdAt": tx["createdAt"]})
    for items in found.values():
        items.sort(key=lambda item: (item["createdAt"], item["jobId"]))
        for item in items:
            item["createdAt"] = iso(item["createdAt"])
    return found


def refunds_of(db: Database, job_id: str) -> list[dict[str, Any]]:
    """The refunds and chargebacks settled against ``job_id``, oldest first."""
    return refunds_by_original(db, [job_id])[job_id]


def lists_refunds(view: dict[str, Any]) -> bool:
    """Whether a job's view carries ``refunds``/``refunded``: a settled job money can come back from."""
    return view.get("type") in REVERSIBLE and view.get("status") == JobStatus.SETTLED


def with_refunds(db: Database, view: dict[str, Any], *, refunds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A job's view plus ``refunds`` and their total ``refunded`` for a settled reversible job.

    ``refunds``: already read (:func:`refunds_by_original` for many jobs at once); else read here.
    """
    if not lists_refunds(view):
        return view
    if refunds is None:
        refunds = refunds_of(db, view["jobId"])
    return {**view, "refunds": refunds, "refunded": sum(item["amount"] for item in refunds)}
