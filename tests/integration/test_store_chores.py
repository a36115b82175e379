"""The fixtures' database reset survives a transaction left open by a settler."""

from __future__ import annotations

import threading

from pymongo import MongoClient

from devstack.stores import MongoServer
from tests.support.store import drop_database_unblocked


def test_drop_is_not_deadlocked_by_an_open_transaction(mongo_server: MongoServer) -> None:
    # The embedded store's dropDatabase spins under its storage lock on a document an
    # open transaction wrote; without the watchdog this drop never returns.
    client: MongoClient = MongoClient(mongo_server.uri)
    db = client.chores_scratch
    db.wallets.insert_one({"_id": "w", "balance": 1})
    session = client.start_session()
    session.start_transaction()
    db.wallets.update_one({"_id": "w"}, {"$inc": {"balance": 1}}, session=session)

    dropper = threading.Thread(target=drop_database_unblocked, args=(db,), daemon=True)
    dropper.start()
    dropper.join(timeout=60)
    assert not dropper.is_alive(), "the drop stayed blocked by the open transaction"
    assert "chores_scratch" not in client.list_database_names()
    session.end_session()
    client.close()
