"""Job polling: visibility, bounded wait with ``Prefer: wait=N``, listing with filters and cursor."""

from __future__ import annotations

from tests.api.helpers import UNKNOWN_ID, assert_problem
from tests.support.invariants import assert_money_invariants
from tests.support.waiting import wait_drained


def test_job_is_visible_to_its_owner_and_admins_only(api, fresh_db):
    alice, bob, admin = api.user(), api.user(), api.user("admin")
    api.fund(alice, 50)
    r = api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 20})
    job = api.expect_settled(alice, r)
    path = f"/api/jobs/{job['jobId']}"
    own = api.get(path, alice)
    assert own.status == 200, own
    # A settled refundable job also lists its refunds (issue 14).
    assert set(own.json) == {"jobId", "type", "status", "createdAt", "settledAt", "result", "error",
                             "refunds", "refunded"}
    assert own.json == job
    assert api.get(path, admin).json == job
    # The receiver is not the owner: existence is not disclosed.
    assert_problem(api.get(path, bob), 404, "JOB_NOT_FOUND")
    assert_problem(api.get(path), 401, "UNAUTHORIZED")
    for missing in (UNKNOWN_ID, "nope", "%24ne"):
        assert_problem(api.get(f"/api/jobs/{missing}", alice), 404, "JOB_NOT_FOUND")
    assert_money_invariants(fresh_db)


def test_prefer_wait_holds_until_terminal_and_says_so(api, fresh_db):
    alice, bob = api.user(), api.user()
    api.fund(alice, 50)
    r = api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 20})
    assert r.status == 202 and r.json["status"] == "queued"
    waited = api.get(f"/api/jobs/{r.json['jobId']}", alice, headers={"Prefer": "wait=10"})
    assert waited.status == 200
    assert waited.headers["Preference-Applied"] == "wait=10"
    assert waited.json["status"] == "settled" and waited.json["settledAt"]

    plain = api.get(f"/api/jobs/{r.json['jobId']}", alice)
    assert "Preference-Applied" not in plain.headers
    capped = api.get(f"/api/jobs/{r.json['jobId']}", alice, headers={"Prefer": "respond-async, wait=600"})
    assert capped.headers["Preference-Applied"] == "wait=10"  # a terminal job answers at once
    assert capped.json == plain.json
    ignored = api.get(f"/api/jobs/{r.json['jobId']}", alice, headers={"Prefer": "handling=strict"})
    assert "Preference-Applied" not in ignored.headers
    assert_money_invariants(fresh_db)


def test_list_jobs_newest_first_with_status_filter_and_cursor(api, fresh_db):
    alice, bob = api.user(), api.user()
    api.fund(alice, 30)
    transfer = {"receiverId": bob.id, "amount": 20}
    ok = api.expect_settled(alice, api.money("/api/wallet/transfer", alice, transfer))
    bad1 = api.expect_failed(alice, api.money("/api/wallet/transfer", alice, transfer), "INSUFFICIENT_FUNDS")
    bad2 = api.expect_failed(alice, api.money("/api/wallet/transfer", alice, transfer), "INSUFFICIENT_FUNDS")
    api.fund(bob, 1)  # bob's jobs never show in alice's list

    everything = api.get("/api/jobs?limit=100", alice).json
    ids = [j["jobId"] for j in everything["items"]]
    assert ids[:3] == [bad2["jobId"], bad1["jobId"], ok["jobId"]] and len(ids) == 4  # + alice's top-up
    assert everything["nextCursor"] is None
    assert all(j["status"] in ("settled", "failed") for j in everything["items"])

    failed = api.get("/api/jobs?status=failed", alice).json["items"]
    assert [j["jobId"] for j in failed] == [bad2["jobId"], bad1["jobId"]]
    settled = api.get("/api/jobs?status=settled", alice).json["items"]
    assert {j["jobId"] for j in settled} == {ok["jobId"], ids[3]}
    assert api.get("/api/jobs?status=queued", alice).json["items"] == []

    seen, cursor = [], None
    while True:
        r = api.get("/api/jobs?limit=1" + (f"&cursor={cursor}" if cursor else ""), alice)
        assert r.status == 200, r
        assert len(r.json["items"]) == 1
        seen.append(r.json["items"][0]["jobId"])
        cursor = r.json["nextCursor"]
        if cursor is None:
            break
    assert seen == ids

    page = api.get("/api/jobs?status=failed&limit=1", alice).json
    rest = api.get(f"/api/jobs?status=failed&limit=1&cursor={page['nextCursor']}", alice).json
    assert [j["jobId"] for j in page["items"] + rest["items"]] == [bad2["jobId"], bad1["jobId"]]
    assert rest["nextCursor"] is None
    assert [j["type"] for j in api.get("/api/jobs", bob).json["items"]] == ["topup"]
    wait_drained(fresh_db)
    assert_money_invariants(fresh_db)


def test_list_jobs_query_is_validated(api):
    user = api.user()
    for query in ("status=done", "limit=0", "limit=101", "cursor=!!", "status[$ne]=x"):
        r = api.get(f"/api/jobs?{query}", user)
        assert r.status == 422, (query, r)
        assert_problem(r, 422, "VALIDATION_FAILED")
