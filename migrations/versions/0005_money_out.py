"""Money out and back: payouts, refunds and chargebacks (issue 14).

- ``payouts``: one document per payout (id = the payout job's id), status
  pending -> submitted -> paid | failed | expired, paid -> returned; written by the
  owner partition's settlement batch, and pending -> submitted by the submission task.
  Indexes: the owner's list (``userId, createdAt``) and beat's work lists
  (``status, updatedAt``: holds to expire, submissions to look up).
- ``transactions.refundOf`` (sparse): every refund or chargeback names its original;
  settlement sums earlier reversals by it, and the original's history lists them.
"""

from __future__ import annotations

from pymongo import ASCENDING as A
from pymongo import DESCENDING as D
from pymongo import IndexModel
from pymongo.database import Database
from pymongo.errors import OperationFailure

INDEXES = {
    "payouts": [
        IndexModel([("userId", A), ("createdAt", D)], name="owner_recent"),
        IndexModel([("status", A), ("updatedAt", A)], name="status_age"),
    ],
    "transactions": [IndexModel([("refundOf", A)], name="refund_of", sparse=True)],
}


def up(db: Database) -> None:
    if "payouts" not in db.list_collection_names():
        db.create_collection("payouts")  # transactions cannot create collections on older servers
    for name, indexes in INDEXES.items():
        db[name].create_indexes(indexes)


def down(db: Database) -> None:
    try:
        db.transactions.drop_index("refund_of")
    except OperationFailure:
        pass
    db.drop_collection("payouts")
