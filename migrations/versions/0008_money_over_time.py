"""Money over time (issue 25): balance checkpoints, statements, payout schedules.

- ``balance_checkpoints``: one per (wallet, window end) the wallet moved in, folded from
  the audit blocks by beat; ``wallet_at`` answers "the nearest checkpoint at or before T".
- ``rollup_state``: the fold's watermark and per-partition audit cursors (one document).
- ``platform_months``: the platform's movements per month, by kind (one per month).
- ``statements`` (``_id`` = ``<userId>:<YYYY-MM>``, so one per wallet and month) and
  ``statement_lines`` (chunks of a stored statement's lines); ``user_period`` lists them.
- ``payout_schedules`` (``_id`` = the user) with ``due`` for beat's scan, and
  ``payout_schedule_runs`` (``_id`` = ``<userId>:<slot>``): what each slot did.
- ``payouts.owner_updated``: a wallet's payouts that changed after an instant (held at T).
- ``users.role_id``: beat walks the creators in ``_id`` order to close their month.
"""

from __future__ import annotations

from pymongo import ASCENDING as A
from pymongo import DESCENDING as D
from pymongo import IndexModel
from pymongo.database import Database
from pymongo.errors import CollectionInvalid

INDEXES = {
    "balance_checkpoints": [IndexModel([("walletId", A), ("at", D)], name="wallet_at")],
    "rollup_state": [],
    "platform_months": [],
    "statements": [IndexModel([("userId", A), ("period", D)], name="user_period")],
    "statement_lines": [IndexModel([("statementId", A), ("n", A)], name="statement_n")],
    "payout_schedules": [IndexModel([("active", A), ("nextSlot", A)], name="due")],
    "payout_schedule_runs": [IndexModel([("userId", A), ("slot", D)], name="user_slot")],
}
PAYOUT_INDEX = IndexModel([("userId", A), ("updatedAt", A)], name="owner_updated")
ROLE_INDEX = IndexModel([("role", A), ("_id", A)], name="role_id")


def up(db: Database) -> None:
    existing = set(db.list_collection_names())
    for name, indexes in INDEXES.items():
        if name not in existing:
            try:
                db.create_collection(name)  # transactions cannot create collections on older servers
            except CollectionInvalid:
                pass
        if indexes:
            db[name].create_indexes(indexes)
    db.payouts.create_indexes([PAYOUT_INDEX])
    db.users.create_indexes([ROLE_INDEX])


def down(db: Database) -> None:
    for name in INDEXES:
        db.drop_collection(name)
    db.payouts.drop_index("owner_updated")
    db.users.drop_index("role_id")
