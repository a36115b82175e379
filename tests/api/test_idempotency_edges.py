"""Issue 17, item 4: idempotency key expiry and ``IDEMPOTENCY_ENABLED=false``, over real HTTP.

Both run against gunicorn started from the Procfile's ``web`` line (``web_server``),
with the session's Celery workers settling. Expiry is driven without waiting hours:
the key's expiry on its job is moved back past ``IDEMPOTENCY_TTL_HOURS`` in the real
store, then beat's expiry task (``tasks.maintenance.expire_keys``, run here in this
process) removes the key from the job, which stays. A key that outlives its expiry,
or an expiry that deletes the job, fails here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo.database import Database

from infra.config import get_settings
from ledger.timeutil import utcnow
from services import idempotency
from tests.api.helpers import Api, User, assert_problem, signed_webhook
from tests.support.client import ApiClient
from tests.support.invariants import assert_money_invariants

TRANSFER = "/api/wallet/transfer"


@pytest.fixture
def http_api(fresh_db: Database, session_worker: Any, web_server: Callable[..., Any]) -> Iterator[Callable[..., Api]]:
    """Factory: an :class:`Api` over a real gunicorn started with ``extra_env``."""
    clients: list[ApiClient] = []

    def start(**extra_env: str) -> Api:
        client = ApiClient(base_url=web_server(extra_env=extra_env or None).base_url)
        clients.append(client)
        return Api(client, fresh_db)

    yield start
    for client in clients:
        client.close()


def _job_id(r: Any) -> str:
    assert r.status == 202, r
    return r.json["jobId"]


def _age_key(db: Database, owner: User, key: str) -> None:
    """Move the key's expiry on its job back so that it expired a minute ago (as after the TTL)."""
    res = db.jobs.update_one({"idem.owner": owner.id, "idem.key": key},
                             {"$set": {"idem.expiresAt": utcnow() - timedelta(minutes=1)}})
    assert res.matched_count == 1, f"no job holds key {key!r}"


def _holder(db: Database, owner: User, key: str) -> dict[str, Any] | None:
    return db.jobs.find_one({"idem.owner": owner.id, "idem.key": key})


def test_an_expired_key_makes_a_new_job_and_moves_money_again(http_api: Callable[..., Api], fresh_db: Database) -> None:
    api = http_api()
    ttl_hours = get_settings().idempotency_ttl_hours
    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    body = {"receiverId": bob.id, "amount": 30}

    first = api.money(TRANSFER, alice, body, key="rent-may")
    first_job = _job_id(first)
    assert "Idempotent-Replayed" not in first.headers, first
    api.expect_settled(alice, first)
    holder = _holder(fresh_db, alice, "rent-may")
    assert holder["_id"] == first_job
    assert holder["idem"]["expiresAt"] - holder["createdAt"] == timedelta(hours=ttl_hours), holder

    # Before expiry: a replay of the first answer, no second charge.
    again = api.money(TRANSFER, alice, body, key="rent-may")
    assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true", again
    assert again.body == first.body
    assert (api.balance(alice), api.balance(bob)) == (70, 30)

    # The key expires: its expiry moves back past the TTL, beat's expiry task removes it
    # from the job, and the job itself stays (jobs are kept for good).
    _age_key(fresh_db, alice, "rent-may")
    assert idempotency.expire_keys(fresh_db) >= 1
    assert _holder(fresh_db, alice, "rent-may") is None
    assert fresh_db.jobs.find_one({"_id": first_job})["status"] == "settled"

    # The same key and body after expiry is a new request: a new job, and the money moves again.
    later = api.money(TRANSFER, alice, body, key="rent-may")
    later_job = _job_id(later)
    assert "Idempotent-Replayed" not in later.headers, later
    assert later_job != first_job
    api.expect_settled(alice, later)
    assert (api.balance(alice), api.balance(bob)) == (40, 60)
    assert api.job_count(ownerId=alice.id, type="transfer") == 2
    # ...and the key is held afresh, by the new job: a retry now replays that one.
    assert _holder(fresh_db, alice, "rent-may")["_id"] == later_job
    replay = api.money(TRANSFER, alice, body, key="rent-may")
    assert replay.headers.get("Idempotent-Replayed") == "true" and replay.json["jobId"] == later_job, replay
    assert (api.balance(alice), api.balance(bob)) == (40, 60)
    assert_money_invariants(fresh_db)


def test_with_idempotency_disabled_every_request_is_a_new_job(http_api: Callable[..., Api],
                                                              fresh_db: Database) -> None:
    api = http_api(IDEMPOTENCY_ENABLED="false")
    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    body = {"receiverId": bob.id, "amount": 10}

    # The same key twice: two jobs, no replay, the money moves twice.
    one, two = (api.money(TRANSFER, alice, body, key="same-key") for _ in range(2))
    assert _job_id(one) != _job_id(two)
    for r in (one, two):
        assert "Idempotent-Replayed" not in r.headers, r
        api.expect_settled(alice, r)
    # The key is still recorded on each job (for operators), but nothing is claimed.
    assert {j["idempotencyKey"] for j in fresh_db.jobs.find({"_id": {"$in": [one.json["jobId"], two.json["jobId"]]}})} \
        == {"same-key"}

    # A missing key is accepted in this mode (api/money.py: idempotency_key() returns None
    # instead of 400 IDEMPOTENCY_KEY_REQUIRED) and makes a job without a key.
    bare = api.client.request("POST", TRANSFER, json_body=body, token=alice.token)
    api.expect_settled(alice, bare)
    assert fresh_db.jobs.find_one({"_id": bare.json["jobId"]})["idempotencyKey"] is None
    # A malformed key is still refused: the header's syntax is checked in both modes.
    bad = api.client.request("POST", TRANSFER, json_body=body, token=alice.token, headers={"Idempotency-Key": "a b"})
    assert_problem(bad, 400, "IDEMPOTENCY_KEY_INVALID")

    # The provider's webhook is keyed by its transaction id only through a claim: disabled,
    # a re-sent top-up is a second job, and the ledger's unique providerTxId still credits once.
    carol = api.user()
    ptx = f"ptx-{uuid.uuid4().hex}"
    hook = {"providerTxId": ptx, "userId": carol.id, "amount": 25}
    first, resent = signed_webhook(api.client, hook), signed_webhook(api.client, hook)
    assert _job_id(first) != _job_id(resent)
    outcomes = sorted((job["status"], (job["error"] or {}).get("code"))
                      for job in (api.settle(carol, r) for r in (first, resent)))
    # The second insert of the providerTxId is refused by the unique index every time:
    # services/batch_isolation.py isolates that job and fails it (PersistentDuplicate).
    assert outcomes == [("failed", "INTERNAL_ERROR"), ("settled", None)], outcomes
    assert api.balance(carol) == 25

    assert (api.balance(alice), api.balance(bob)) == (70, 30)
    assert fresh_db.jobs.count_documents({"idem": {"$exists": True}}) == 0
    assert_money_invariants(fresh_db)
