"""Migration 0009 (issue 24, lever 1): idempotency keys move onto their jobs and back.

A populated store goes up -> down -> up; replays keep answering the same bytes across
each step, a key whose job never got stored is freed, an expired key is not carried,
and the console's form keys follow their own collection.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import migrations
from ledger.operations import Transfer
from ledger.timeutil import utcnow
from services.jobs import KeyClaim, Outcome, accept_job, accepted_response
from tests.support.seeding import add_user, partitions

NINE = 9


def _accept(db: Any, user: str, key: str) -> Any:
    return accept_job(db, Transfer(user, "someone", 5), user, partitions=partitions(), ring=lambda *a: None,
                      key=key, claim=KeyClaim(user, "fp", 24))


def _form_key(user: str) -> dict[str, Any]:
    now = utcnow()
    return {"ownerId": user, "key": "console:form-1", "fingerprint": "freeze:w", "jobId": None, "action": "freeze",
            "targetId": "w", "createdAt": now, "expiresAt": now + timedelta(hours=24)}


def test_up_down_up_on_a_populated_store_keeps_every_replay(fresh_db):
    db = fresh_db
    migrations.down(db, to=NINE)  # later migrations off: this test walks 0009 alone
    user = add_user(db, partition=0)
    first = {k: _accept(db, user, k) for k in ("k-1", "k-2", "k-3")}
    db.jobs.update_one({"_id": first["k-2"].job["_id"]}, {"$set": {"status": "settled", "settledAt": utcnow(),
                                                                    "result": {"amount": 5}}})
    db.form_keys.insert_one(_form_key(user))

    # down: the old shape, with the derived answer stored as the old code replays it.
    assert migrations.down(db, to=NINE - 1) == [NINE]
    assert "form_keys" not in db.list_collection_names()
    assert not {"idem_owner_key", "idem_expires"} & set(db.jobs.index_information())
    assert db.jobs.count_documents({"idem": {"$exists": True}}) == 0
    for key, got in first.items():
        rec = db.idempotency_keys.find_one({"ownerId": user, "key": key})
        assert rec["jobId"] == got.job["_id"] and rec["fingerprint"] == "fp"
        assert rec["response"]["body"] == got.response.body and rec["response"]["status"] == 202
        assert rec["response"]["headers"] == got.response.headers
    assert db.idempotency_keys.find_one({"key": "console:form-1"})["action"] == "freeze"
    # Records only the old code could leave: a claim whose job was never stored, an expired one.
    now = utcnow()
    db.idempotency_keys.insert_many([
        {"ownerId": user, "key": "orphan", "fingerprint": "fp", "jobId": "never-stored", "response": {},
         "createdAt": now, "expiresAt": now + timedelta(hours=24)},
        {"ownerId": user, "key": "k-expired", "fingerprint": "fp", "jobId": first["k-3"].job["_id"],
         "response": {}, "createdAt": now - timedelta(days=2), "expiresAt": now - timedelta(days=1)},
    ])

    for _ in range(2):  # up, then down -> up once more: the same result
        assert migrations.up(db, to=NINE) == [NINE]
        assert "idempotency_keys" not in db.list_collection_names()
        assert {"idem_owner_key", "idem_expires"} <= set(db.jobs.index_information())
        assert db.form_keys.find_one({"key": "console:form-1"})["action"] == "freeze"
        for key, got in first.items():  # replays answer the first bytes, from the job
            again = _accept(db, user, key)
            assert again.outcome == Outcome.REPLAYED and again.response == got.response, key
        assert db.jobs.count_documents({"idem": {"$exists": True}}) == 3
        assert migrations.down(db, to=NINE - 1) == [NINE]
        assert db.idempotency_keys.count_documents({"jobId": {"$ne": None}}) == 3  # orphan, expired: gone

    assert migrations.up(db, to=NINE) == [NINE]
    orphan = _accept(db, user, "orphan")  # its job never existed: the key is free again
    assert orphan.outcome == Outcome.ACCEPTED
    assert accepted_response(db.jobs.find_one({"_id": orphan.job["_id"]})) == orphan.response
