"""Issue 18, item 9: a job insert whose outcome is unknown keeps its idempotency claim.

Fault injection with SecantusDB's ``failCommand``, scoped by ``appName`` to this
process's connections (the in-process Flask app), skipping the claim's insert so the
fault lands on the job's insert.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

import infra.mongo
from tests.api.helpers import assert_problem

APP = "purser-accept-fault"


@pytest.fixture
def fault(api: Any) -> Iterator[Any]:
    """Arms a fail point on the second insert of this process's connections."""
    infra.mongo.set_app_name(APP)

    def arm(**data: Any) -> None:
        api.db.client.admin.command("configureFailPoint", "failCommand", mode={"skip": 1, "times": 1},
                                    data={"failCommands": ["insert"], "appName": APP, **data})
    try:
        yield arm
    finally:
        api.db.client.admin.command("configureFailPoint", "failCommand", mode="off")
        infra.mongo.set_app_name("purser")


def test_a_write_concern_error_on_the_job_insert_keeps_the_key_and_a_retry_replays(api, fault):
    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    body = {"receiverId": bob.id, "amount": 40}
    fault(writeConcernError={"code": 64, "errmsg": "injected: replication unknown"})

    first = api.money("/api/wallet/transfer", alice, body, key="wce-1")
    # The insert ran; only its reply failed. The client is told to retry with the same key.
    assert_problem(first, 503, "SERVICE_UNAVAILABLE")
    assert api.job_count(ownerId=alice.id, type="transfer") == 1
    assert api.db.idempotency_keys.count_documents({"ownerId": alice.id, "key": "wce-1"}) == 1

    retry = api.money("/api/wallet/transfer", alice, body, key="wce-1")
    assert retry.status == 202 and retry.headers.get("Idempotent-Replayed") == "true", retry
    stored = api.db.jobs.find_one({"ownerId": alice.id, "type": "transfer"})
    assert retry.json["jobId"] == stored["_id"]
    # The failed request never rang and a replay does not ring: beat's sweeper would ring
    # the partition of this old queued job; no beat runs in this suite, so ring as it would.
    from tasks.settle import ring
    ring(stored["partition"], None, force=True)
    assert api.wait(alice, stored["_id"])["status"] == "settled"
    assert api.job_count(ownerId=alice.id, type="transfer") == 1
    assert (api.balance(alice), api.balance(bob)) == (60, 40)


def test_a_lost_connection_on_the_job_insert_answers_409_then_the_same_job(api, fault, monkeypatch):
    import services.idempotency

    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    body = {"receiverId": bob.id, "amount": 25}
    fault(closeConnection=True)  # SecantusDB closes before running the insert: no job

    first = api.money("/api/wallet/transfer", alice, body, key="net-1")
    assert_problem(first, 503, "SERVICE_UNAVAILABLE")
    claim = api.db.idempotency_keys.find_one({"ownerId": alice.id, "key": "net-1"})
    assert claim is not None, "the claim must survive an insert whose outcome is unknown"
    assert api.job_count(ownerId=alice.id, type="transfer") == 0

    # While the claim is fresh the first request may still be in flight: 409, never a new job.
    assert_problem(api.money("/api/wallet/transfer", alice, body, key="net-1"), 409, "IDEMPOTENCY_KEY_IN_USE")
    # Once stale it is taken over with the ORIGINAL job id: a late first insert cannot make two jobs.
    monkeypatch.setattr(services.idempotency, "STALE_AFTER", timedelta(seconds=0))
    retry = api.money("/api/wallet/transfer", alice, body, key="net-1")
    assert retry.status == 202, retry
    assert retry.json["jobId"] == claim["jobId"]
    assert api.wait(alice, claim["jobId"])["status"] == "settled"
    assert api.job_count(ownerId=alice.id, type="transfer") == 1
    assert (api.balance(alice), api.balance(bob)) == (75, 25)


def test_a_known_refusal_of_the_job_insert_frees_the_key(api, fault):
    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    body = {"receiverId": bob.id, "amount": 10}
    fault(errorCode=2, errmsg="injected: bad value")  # the server refused: nothing was written

    assert api.money("/api/wallet/transfer", alice, body, key="bad-1").status == 500
    assert api.db.idempotency_keys.count_documents({"ownerId": alice.id, "key": "bad-1"}) == 0
    retry = api.money("/api/wallet/transfer", alice, body, key="bad-1")
    assert retry.status == 202 and "Idempotent-Replayed" not in retry.headers
    assert api.wait(alice, retry.json["jobId"])["status"] == "settled"
