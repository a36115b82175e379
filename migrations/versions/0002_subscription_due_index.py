"""An index the subscription tick can walk without a collection scan.

The tick asks for ``{status: "active", autoRenew: <bool>, expiresAt: {$lte: now}}``
in ``(expiresAt, _id)`` order and pages on that key. ``{status:1, expiresAt:1}``
serves only part of that filter (``autoRenew`` is checked per document); this
index takes both equalities, the ``expiresAt`` range and the ``_id`` tie-break,
so each chunk, the expiry update and the tie query are pure index ranges on
MongoDB and on the embedded SecantusDB planner alike.
"""

from __future__ import annotations

from pymongo import ASCENDING as A
from pymongo import IndexModel
from pymongo.database import Database
from pymongo.errors import OperationFailure

INDEXES = {
    "subscriptions": [
        IndexModel([("status", A), ("autoRenew", A), ("expiresAt", A), ("_id", A)], name="due_by_renewal"),
    ],
}


def up(db: Database) -> None:
    for name, indexes in INDEXES.items():
        db[name].create_indexes(indexes)


def down(db: Database) -> None:
    for name, indexes in INDEXES.items():
        for index in indexes:
            try:
                db[name].drop_index(index.document["name"])
            except OperationFailure:
                pass  # already gone (collection or index dropped by hand)
