"""Drop jobs.status_age: the sweeper now asks each partition through partition_queue.

SecantusDB rewrites every index entry of a document on each update, so each extra
index on ``jobs`` costs about 0.2 ms per settled job (measured); this one served
only the sweeper, which can use the queue index instead.
"""

from __future__ import annotations

from pymongo import ASCENDING
from pymongo.database import Database


def up(db: Database) -> None:
    if "status_age" in db.jobs.index_information():
        db.jobs.drop_index("status_age")


def down(db: Database) -> None:
    db.jobs.create_index([("status", ASCENDING), ("createdAt", ASCENDING)], name="status_age")
