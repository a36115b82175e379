"""Issue 18, item 9, and issue 24: a job insert whose outcome is unknown, over the Flask app.

Fault injection with SecantusDB's ``failCommand``, scoped by ``appName`` to this
process's connections (the in-process Flask app). Accepting writes ONE document (the
job, which holds its key), so the fault lands on the first insert of the request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import infra.mongo
from tests.api.helpers import assert_problem

APP = "purser-accept-fault"


@pytest.fixture
def fault(api: Any) -> Iterator[Any]:
    """Arms a fail point on the next insert of this process's connections (the job's)."""
    infra.mongo.set_app_name(APP)

    def arm(**data: Any) -> None:
        api.db.client.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                                    data={"failCommands": ["insert"], "appName": APP, **data})
    try:
        yield arm
    finally:
        api.db.client.admin.command("configureFailPoint", "failCommand", mode="off")
        infra.mongo.set_app_name("purser")


def test_a_write_concern_error_on_the_job_insert_and_a_retry_replays_the_stored_job(api, fault):
    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    body = {"receiverId": bob.id, "amount": 40}
    fault(writeConcernError={"code": 64, "errmsg": "injected: replication unknown"})

    first = api.money("/api/wallet/transfer", alice, body, key="wce-1")
    # The insert ran; only its reply failed. The client is told to retry with the same key.
    assert_problem(first, 503, "SERVICE_UNAVAILABLE")
    assert api.job_count(ownerId=alice.id, type="transfer") == 1
    assert api.db.jobs.count_documents({"idem.owner": alice.id, "idem.key": "wce-1"}) == 1  # the job holds the key

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


def test_a_lost_connection_on_the_job_insert_leaves_nothing_and_the_retry_is_a_first_request(api, fault):
    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    body = {"receiverId": bob.id, "amount": 25}
    fault(closeConnection=True)  # SecantusDB closes before running the insert: no job

    first = api.money("/api/wallet/transfer", alice, body, key="net-1")
    assert_problem(first, 503, "SERVICE_UNAVAILABLE")
    assert api.job_count(ownerId=alice.id, type="transfer") == 0

    # Nothing holds the key (no separate claim was written): no 409 window, the retry is
    # accepted at once. Had the first insert run after all, the retry would replay it, and
    # a first insert arriving after this one fails on the key index (test_guards_and_claims).
    retry = api.money("/api/wallet/transfer", alice, body, key="net-1")
    assert retry.status == 202 and "Idempotent-Replayed" not in retry.headers, retry
    assert api.wait(alice, retry.json["jobId"])["status"] == "settled"
    assert api.job_count(ownerId=alice.id, type="transfer") == 1
    assert (api.balance(alice), api.balance(bob)) == (75, 25)


def test_a_known_refusal_of_the_job_insert_frees_the_key(api, fault):
    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    body = {"receiverId": bob.id, "amount": 10}
    fault(errorCode=2, errmsg="injected: bad value")  # the server refused: nothing was written

    assert api.money("/api/wallet/transfer", alice, body, key="bad-1").status == 500
    assert api.db.jobs.count_documents({"idem.owner": alice.id, "idem.key": "bad-1"}) == 0
    retry = api.money("/api/wallet/transfer", alice, body, key="bad-1")
    assert retry.status == 202 and "Idempotent-Replayed" not in retry.headers
    assert api.wait(alice, retry.json["jobId"])["status"] == "settled"
