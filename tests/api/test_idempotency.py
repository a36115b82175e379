"""Idempotency keys on every money POST, including two concurrent requests with one key."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.api.helpers import Api, User, assert_problem
from tests.support.client import ApiClient
from tests.support.invariants import assert_money_invariants
from tests.support.waiting import wait_drained


def _money_bodies(api: Api, creator: User) -> dict[str, dict]:
    """Every money route with a body it accepts (the creator gets content and a plan)."""
    content = api.send("POST", "/api/premium/content", creator, {"title": "t", "price": 5}).json
    api.send("PUT", "/api/subscription/plan", creator, {"price": 5, "periodDays": 30})
    return {
        "/api/wallet/transfer": {"receiverId": creator.id, "amount": 5},
        "/api/premium/unlock": {"contentId": content["contentId"]},
        "/api/subscription/subscribe": {"creatorId": creator.id},
        "/api/gifts": {"creatorId": creator.id, "amount": 5},
        "/api/admin/credit": {"userId": creator.id, "amount": 5, "reason": "test"},
    }


def test_every_money_post_requires_a_key(api):
    caller, creator = api.user("admin"), api.user("creator")
    for route, body in _money_bodies(api, creator).items():
        r = api.client.request("POST", route, json_body=body, token=caller.token)
        assert_problem(r, 400, "IDEMPOTENCY_KEY_REQUIRED")
        # The key is checked before the body.
        r = api.client.request("POST", route, json_body={"bogus": True}, token=caller.token)
        assert_problem(r, 400, "IDEMPOTENCY_KEY_REQUIRED")
    assert api.job_count() == 0


def test_malformed_keys_are_refused(api):
    alice, bob = api.user(), api.user()
    for key in ("", "k" * 256, "has space", "tab\there", "caf\xe9", "del\x7f", "bell\x07"):
        r = api.client.request("POST", "/api/wallet/transfer", json_body={"receiverId": bob.id, "amount": 5},
                               token=alice.token, headers={"Idempotency-Key": key})
        assert r.status == 400, (key, r)
        assert_problem(r, 400, "IDEMPOTENCY_KEY_INVALID")
    assert api.job_count() == 0


def test_longest_and_odd_but_printable_keys_are_accepted(api, fresh_db):
    alice, bob = api.user(), api.user()
    for key in ("k" * 255, "~!@#$%^&*()_+{}|:<>?`-=[]\\;',./\""):
        r = api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 5}, key=key)
        assert r.status == 202, r
        api.expect_failed(alice, r, "INSUFFICIENT_FUNDS")
    assert_money_invariants(fresh_db)


def test_same_key_same_body_replays_byte_for_byte(api, fresh_db):
    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    body = {"receiverId": bob.id, "amount": 30, "note": "dinner"}
    first = api.money("/api/wallet/transfer", alice, body, key="order-1")
    assert first.status == 202 and "Idempotent-Replayed" not in first.headers, first
    api.expect_settled(alice, first)
    # The same JSON spelled differently is the same request.
    respelled = json.dumps({"note": "dinner", "amount": 30, "receiverId": bob.id}, indent=2).encode()
    for again in (api.money("/api/wallet/transfer", alice, body, key="order-1"),
                  api.client.request("POST", "/api/wallet/transfer", data=respelled, content_type="application/json",
                                     token=alice.token, key="order-1")):
        assert again.status == 202, again
        assert again.body == first.body  # the first answer (status queued), not the job's current state
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.headers["Location"] == first.headers["Location"]
        assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert api.job_count(ownerId=alice.id, type="transfer") == 1
    assert (api.balance(alice), api.balance(bob)) == (70, 30)
    assert_money_invariants(fresh_db)


def test_same_key_with_another_body_or_route_is_422(api, fresh_db):
    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    first = api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 30}, key="k-1")
    api.expect_settled(alice, first)
    assert_problem(api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 31}, key="k-1"),
                   422, "IDEMPOTENCY_KEY_REUSED")
    assert_problem(api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 30, "note": "x"},
                             key="k-1"), 422, "IDEMPOTENCY_KEY_REUSED")
    assert_problem(api.money("/api/gifts", alice, {"creatorId": bob.id, "amount": 30}, key="k-1"),
                   422, "IDEMPOTENCY_KEY_REUSED")
    assert api.job_count(ownerId=alice.id, type={"$ne": "topup"}) == 1
    assert api.balance(alice) == 70
    assert_money_invariants(fresh_db)


def test_keys_are_scoped_per_user(api, fresh_db):
    alice, bob, carol = api.user(), api.user(), api.user()
    api.fund(alice, 10)
    api.fund(bob, 10)
    ra = api.money("/api/wallet/transfer", alice, {"receiverId": carol.id, "amount": 4}, key="shared-key")
    rb = api.money("/api/wallet/transfer", bob, {"receiverId": carol.id, "amount": 4}, key="shared-key")
    assert ra.status == rb.status == 202
    assert "Idempotent-Replayed" not in rb.headers
    assert ra.json["jobId"] != rb.json["jobId"]
    api.expect_settled(alice, ra)
    api.expect_settled(bob, rb)
    assert api.balance(carol) == 8
    assert_problem(api.get(f"/api/jobs/{ra.json['jobId']}", bob), 404, "JOB_NOT_FOUND")
    assert_money_invariants(fresh_db)


def test_a_refused_request_does_not_consume_its_key(api, fresh_db):
    alice, bob = api.user(), api.user()
    api.fund(alice, 10)
    assert_problem(api.money("/api/wallet/transfer", alice, {"receiverId": alice.id, "amount": 4}, key="k-2"),
                   422, "SELF_TRANSFER")
    assert_problem(api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": "4"}, key="k-2"),
                   422, "VALIDATION_FAILED")
    r = api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 4}, key="k-2")
    assert r.status == 202 and "Idempotent-Replayed" not in r.headers, r
    api.expect_settled(alice, r)
    assert_money_invariants(fresh_db)


def _race(sessions: list[requests.Session], url: str, data: bytes, headers: dict[str, str]) -> list[requests.Response]:
    """POST the same request from every session at once (released together by a barrier)."""
    barrier = threading.Barrier(len(sessions))

    def fire(session: requests.Session) -> requests.Response:
        barrier.wait(timeout=30)
        return session.post(url, data=data, headers=headers, timeout=60)

    with ThreadPoolExecutor(len(sessions)) as pool:
        return list(pool.map(fire, sessions))


def test_concurrent_identical_requests_with_one_key_create_one_job(web_server, fresh_db, session_worker):
    """Real gunicorn (2 workers x 4 threads): parallel requests race for one key."""
    server = web_server(concurrency=2)
    api = Api(ApiClient(base_url=server.base_url), fresh_db)
    alice, bob = api.user(), api.user()
    api.fund(alice, 1000)
    parallel, rounds, amount = 8, 4, 7
    url = f"{server.base_url}/api/wallet/transfer"
    sessions = [requests.Session() for _ in range(parallel)]
    replayed = 0
    try:
        for _ in range(rounds):
            key = f"race-{uuid.uuid4().hex}"
            headers = {"Authorization": f"Bearer {alice.token}", "Idempotency-Key": key,
                       "Content-Type": "application/json"}
            data = json.dumps({"receiverId": bob.id, "amount": amount}).encode()
            for s in sessions:  # open every connection first so the POSTs leave together
                assert s.get(f"{server.base_url}/api/health", timeout=30).status_code == 200
            answers = _race(sessions, url, data, headers)

            assert fresh_db.jobs.count_documents({"ownerId": alice.id, "idempotencyKey": key}) == 1
            job_id = fresh_db.jobs.find_one({"ownerId": alice.id, "idempotencyKey": key})["_id"]
            originals = [a for a in answers if a.status_code == 202 and "Idempotent-Replayed" not in a.headers]
            assert len(originals) == 1, [(a.status_code, a.text) for a in answers]
            assert originals[0].json()["jobId"] == job_id
            # No "in use" window any more: every loser of the race replays the winner's job.
            for a in answers:
                assert a.status_code == 202, (a.status_code, a.text)
                assert a.content == originals[0].content and a.headers["Location"] == f"/api/jobs/{job_id}"
                replayed += a.headers.get("Idempotent-Replayed") == "true"
        assert replayed == rounds * (parallel - 1)
    finally:
        for s in sessions:
            s.close()
    wait_drained(fresh_db)
    assert api.balance(alice) == 1000 - rounds * amount
    assert api.balance(bob) == rounds * amount
    assert_money_invariants(fresh_db)
