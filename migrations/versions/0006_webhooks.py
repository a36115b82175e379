"""Job webhooks (issue 16, item 1): endpoints, events, deliveries and the dispatch cursors.

- ``webhook_endpoints``: one per registered URL (event types, secrets, active/disabled);
  the admin list pages on ``createdAt``.
- ``webhook_events``: one per job event (``_id`` = the event id, derived from the job),
  holding the exact JSON body every endpoint receives. Insert-only.
- ``webhook_deliveries``: one per (event, endpoint), ``_id`` derived from both, so a
  dispatcher run twice inserts nothing new. Indexes: an endpoint's delivery log
  (``endpointId, createdAt``) and beat's due sweep (``status, nextAttemptAt``).
- ``webhook_cursors``: per ledger partition, the last audit block turned into events
  (``auditSeq``). Blocks are read on the existing ``auditlogs.partition_seq_unique``.
"""

from __future__ import annotations

from pymongo import ASCENDING as A
from pymongo import DESCENDING as D
from pymongo import IndexModel
from pymongo.database import Database
from pymongo.errors import CollectionInvalid

INDEXES = {
    "webhook_endpoints": [IndexModel([("createdAt", D), ("_id", D)], name="recent"),
                          IndexModel([("status", A)], name="status")],
    "webhook_events": [],
    "webhook_deliveries": [IndexModel([("endpointId", A), ("createdAt", D), ("_id", D)], name="endpoint_recent"),
                           IndexModel([("status", A), ("nextAttemptAt", A)], name="due")],
    "webhook_cursors": [],
}


def up(db: Database) -> None:
    existing = set(db.list_collection_names())
    for name, indexes in INDEXES.items():
        if name not in existing:
            try:
                db.create_collection(name)  # transactions cannot create collections on older servers
            except CollectionInvalid:
                pass  # created meanwhile by a running worker: what we wanted
        if indexes:
            db[name].create_indexes(indexes)


def down(db: Database) -> None:
    for name in INDEXES:
        db.drop_collection(name)
