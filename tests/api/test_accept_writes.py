"""Issue 24, lever 1: an accepted request writes exactly ONE document, a replay none.

Every MongoDB command of the Flask app in this process is counted on the wire with a
pymongo ``CommandListener`` (``loadtest.commands.CommandCounter``, the bench's own).
Before issue 24 an accepted transfer wrote two documents (the ``idempotency_keys``
claim, then the job); now the job holds its key and is the only write.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from bson import ObjectId

from ledger.timeutil import utcnow
from loadtest.commands import WRITE_FIELDS, CommandCounter
from tests.api.helpers import mint_token

TRANSFER = "/api/wallet/transfer"
WRITES = set(WRITE_FIELDS) | {"findAndModify", "bulkWrite"}


def _user(db: Any) -> str:
    """A user with a wallet, inserted directly (no argon2, no counted commands)."""
    uid, now = str(ObjectId()), utcnow()
    db.users.insert_one({"_id": uid, "email": f"w{uuid.uuid4().hex[:12]}@example.com", "passwordHash": "x",
                         "role": "free", "displayName": None, "accountStatus": "active", "createdAt": now})
    db.wallets.insert_one({"_id": uid, "userId": uid, "balance": 100, "status": "active", "version": 0,
                           "createdAt": now, "lastTransactionAt": None})
    return uid


@pytest.fixture
def counted(fresh_db: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, CommandCounter]]:
    """The Flask app in this process (no doorbell), its MongoDB client counted."""
    import infra.mongo
    from api import create_app
    from api.money import RINGER_EXTENSION
    from infra.config import get_settings

    counter = CommandCounter()
    original = infra.mongo.MongoClient
    monkeypatch.setattr(infra.mongo, "MongoClient", lambda *a, **kw: original(*a, event_listeners=[counter], **kw))
    infra.mongo.reset_client()
    app = create_app(get_settings())
    app.extensions[RINGER_EXTENSION] = lambda partition, request_id: None  # no broker: writes only
    try:
        with app.test_client() as client:
            yield client, counter
    finally:
        infra.mongo.close_client()
        monkeypatch.undo()
        infra.mongo.reset_client()


def _post(client: Any, token: str, body: dict[str, Any], key: str) -> Any:
    return client.post(TRANSFER, data=json.dumps(body), content_type="application/json",
                       headers={"Authorization": f"Bearer {token}", "Idempotency-Key": key})


def _writes(tally: Any) -> dict[str, int]:
    return {k: n for k, n in tally.commands.items() if k.split(" ", 1)[0] in WRITES}


def test_an_accepted_transfer_writes_one_document_and_a_replay_none(counted, fresh_db):
    client, counter = counted
    payer, payee = _user(fresh_db), _user(fresh_db)
    token = mint_token(payer, "free")
    body = {"receiverId": payee, "amount": 7}
    assert _post(client, token, body, "warm-up").status_code == 202  # first-request caches, connections
    counter.take()

    first = _post(client, token, body, "one-write")
    accepted = counter.take()
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers, first.get_data(as_text=True)
    assert _writes(accepted) == {"insert jobs": 1}, accepted.as_dict()
    assert dict(accepted.documents) == {"insert jobs": 1}, accepted.as_dict()  # one document, the job
    assert accepted.failed == 0
    job = fresh_db.jobs.find_one({"_id": first.get_json()["jobId"]})
    assert job["idem"]["key"] == "one-write" and job["idem"]["owner"] == payer

    jobs_before = fresh_db.jobs.count_documents({})
    again = _post(client, token, body, "one-write")
    replayed = counter.take()
    assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data() and again.headers["Location"] == first.headers["Location"]
    # The replay's only write command is the job insert the key index refuses: nothing is
    # written (no update, no delete, no document), and the holder is read once.
    assert _writes(replayed) == {"insert jobs": 1} and replayed.failed == 0, replayed.as_dict()
    assert fresh_db.jobs.count_documents({}) == jobs_before
    assert replayed.commands["find jobs"] == 1, replayed.as_dict()


def _reads(tally: Any) -> dict[str, int]:
    return {k: n for k, n in tally.commands.items() if k.split(" ", 1)[0] in {"find", "aggregate", "count"}}


def _content(db: Any, creator: str) -> str:
    content_id = str(ObjectId())
    db.contents.insert_one({"_id": content_id, "creatorId": creator, "title": "t", "price": 5, "isActive": True,
                            "createdAt": utcnow()})
    return content_id


def test_a_returning_caller_reads_nothing_to_accept_and_a_new_fact_is_found_at_once(counted, fresh_db):
    """Issue 24, lever 3: known receivers and contents' creators cost no read; an unknown one is read."""
    client, counter = counted
    payer, payee, creator = _user(fresh_db), _user(fresh_db), _user(fresh_db)
    token = mint_token(payer, "free")
    known = _content(fresh_db, creator)
    headers = {"Authorization": f"Bearer {token}"}

    def unlock(content_id: str, key: str) -> Any:
        return client.post("/api/premium/unlock", data=json.dumps({"contentId": content_id}),
                           content_type="application/json", headers={**headers, "Idempotency-Key": key})

    assert _post(client, token, {"receiverId": payee, "amount": 1}, "warm-transfer").status_code == 202
    assert unlock(known, "warm-unlock").status_code == 202
    counter.take()

    assert _post(client, token, {"receiverId": payee, "amount": 2}, "again-transfer").status_code == 202
    assert unlock(known, "again-unlock").status_code == 202  # a second job; settlement refuses the double
    returning = counter.take()
    assert _reads(returning) == {}, returning.as_dict()
    assert _writes(returning) == {"insert jobs": 2}, returning.as_dict()

    # Created a moment ago: not remembered yet, so read, found and accepted at once.
    newcomer, fresh = _user(fresh_db), _content(fresh_db, creator)
    assert _post(client, token, {"receiverId": newcomer, "amount": 1}, "new-user").status_code == 202
    assert unlock(fresh, "new-content").status_code == 202
    assert set(_reads(counter.take())) == {"find wallets", "find contents"}
    # Unknown ids are read every time and refused with their stable codes.
    for _ in range(2):
        r = unlock(str(ObjectId()), uuid.uuid4().hex)
        assert r.status_code == 422 and r.get_json()["code"] == "CONTENT_NOT_FOUND"
    assert _reads(counter.take()) == {"find contents": 2}
