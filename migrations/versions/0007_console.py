"""The operator console (issue 26): check results it shows, and a wallet's operator trail.

- ``check_runs``: one document per reconcile or audit-verify run (``kind``, ``ok``,
  ``at``, a short summary), written by beat's reconcile and the ``python -m ops``
  commands; the overview reads the newest of each kind on ``kind_recent``.
- ``auditlogs.operator_target`` (sparse on ``target.id``): the operator chain's
  entries about one wallet, delivery or payout. Settlement's audit blocks have no
  ``target``, so they add no entry to it and the settle path pays nothing.
"""

from __future__ import annotations

from pymongo import ASCENDING as A
from pymongo import DESCENDING as D
from pymongo import IndexModel
from pymongo.database import Database
from pymongo.errors import CollectionInvalid, OperationFailure

INDEXES = {
    "check_runs": [IndexModel([("kind", A), ("at", D)], name="kind_recent")],
    "auditlogs": [IndexModel([("target.id", A)], name="operator_target", sparse=True)],
}


def up(db: Database) -> None:
    if "check_runs" not in db.list_collection_names():
        try:
            db.create_collection("check_runs")
        except CollectionInvalid:
            pass  # created meanwhile by a running reconcile: what we wanted
    for name, indexes in INDEXES.items():
        db[name].create_indexes(indexes)


def down(db: Database) -> None:
    try:
        db.auditlogs.drop_index("operator_target")
    except OperationFailure:
        pass  # already gone
    db.drop_collection("check_runs")
