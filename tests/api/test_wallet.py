"""Balance, history with cursor pagination, and peer transfers."""

from __future__ import annotations

import base64

from tests.api.helpers import UNKNOWN_ID, assert_problem
from tests.support.invariants import assert_money_invariants


def test_balance_of_a_new_user(api):
    user = api.user()
    r = api.get("/api/wallet/balance", user)
    assert r.status == 200, r
    assert r.json == {"walletId": user.id, "userId": user.id, "balance": 0, "incoming": 0, "held": 0,
                      "currency": "COIN", "status": "active"}
    assert_problem(api.get("/api/wallet/balance"), 401, "UNAUTHORIZED")


def test_transfer_settles_and_both_histories_show_it(api, fresh_db):
    alice, bob = api.user(), api.user()
    api.fund(alice, 1000)
    r = api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 300, "note": "rent"})
    assert r.status == 202, r
    assert r.json["type"] == "transfer" and r.json["status"] == "queued" and r.json["error"] is None
    job = api.expect_settled(alice, r)
    assert job["result"] == {"amount": 300, "receiverId": bob.id}
    assert (api.balance(alice), api.balance(bob)) == (700, 300)

    mine = api.get("/api/wallet/transactions", alice).json["items"]
    assert [(i["type"], i["amount"], i["counterpartyId"]) for i in mine] == [
        ("transfer", -300, bob.id), ("topup", 1000, None)]
    assert mine[0]["jobId"] == job["jobId"] and mine[0]["txId"]
    theirs = api.get("/api/wallet/transactions", bob).json
    assert [(i["type"], i["amount"], i["counterpartyId"]) for i in theirs["items"]] == [
        ("transfer", 300, alice.id)]
    assert theirs["nextCursor"] is None
    assert_money_invariants(fresh_db)


def test_transactions_paginate_newest_first_with_a_cursor(api, fresh_db):
    alice, bob = api.user(), api.user()
    for amount in (100, 200, 300):
        api.fund(alice, amount)
    for amount in (10, 20):
        api.expect_settled(alice, api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": amount}))
    api.expect_settled(bob, api.money("/api/wallet/transfer", bob, {"receiverId": alice.id, "amount": 5}))

    pages, cursor = [], None
    while True:
        path = "/api/wallet/transactions?limit=2" + (f"&cursor={cursor}" if cursor else "")
        r = api.get(path, alice)
        assert r.status == 200, r
        pages.append(r.json["items"])
        cursor = r.json["nextCursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [2, 2, 2]
    items = [i for page in pages for i in page]
    assert len({i["txId"] for i in items}) == 6
    assert [i["amount"] for i in items] == [5, -20, -10, 300, 200, 100]
    stamps = [i["createdAt"] for i in items]
    assert stamps == sorted(stamps, reverse=True)

    whole = api.get("/api/wallet/transactions?limit=100", alice).json
    assert whole["items"] == items and whole["nextCursor"] is None
    default = api.get("/api/wallet/transactions", alice).json
    assert default["items"] == items
    assert_money_invariants(fresh_db)


BAD_PAGE_QUERIES = [
    "limit=0", "limit=101", "limit=-1", "limit=ten", "limit=1.5", "cursor=%24ne", "cursor=", "cursor=abc",
    # Well-formed base64, but the timestamp overflows datetime: once a 500.
    "cursor=" + base64.urlsafe_b64encode(b"99999999999999999999:0123456789abcdef01234567").decode().rstrip("="),
    "cursor=" + base64.urlsafe_b64encode(b"-99999999999999999999:x").decode().rstrip("="),
    "page=2",
]


def test_transactions_query_is_validated(api):
    user = api.user()
    for query in BAD_PAGE_QUERIES:
        r = api.get(f"/api/wallet/transactions?{query}", user)
        assert r.status == 422, (query, r)
        assert_problem(r, 422, "VALIDATION_FAILED")


def test_transfer_refusals_at_accept_time_create_no_job(api):
    alice = api.user()
    api.fund(alice, 100)
    jobs_before = api.job_count()
    r = api.money("/api/wallet/transfer", alice, {"receiverId": UNKNOWN_ID, "amount": 10})
    assert_problem(r, 422, "RECEIVER_NOT_FOUND")
    r = api.money("/api/wallet/transfer", alice, {"receiverId": alice.id, "amount": 10})
    assert_problem(r, 422, "SELF_TRANSFER")
    r = api.money("/api/wallet/transfer", alice, {"receiverId": "platform:revenue", "amount": 10})
    assert_problem(r, 422, "VALIDATION_FAILED")
    assert api.job_count() == jobs_before
    assert api.balance(alice) == 100


def test_insufficient_funds_is_the_jobs_error(api, fresh_db):
    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    job = api.expect_failed(alice, api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 101}),
                            "INSUFFICIENT_FUNDS")
    assert job["type"] == "transfer"
    assert (api.balance(alice), api.balance(bob)) == (100, 0)
    # An empty wallet fails the same way, and the exact balance still goes through.
    api.expect_failed(bob, api.money("/api/wallet/transfer", bob, {"receiverId": alice.id, "amount": 1}),
                      "INSUFFICIENT_FUNDS")
    api.expect_settled(alice, api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 100}))
    assert (api.balance(alice), api.balance(bob)) == (0, 100)
    assert_money_invariants(fresh_db)


def test_a_transfer_cannot_name_another_sender(api):
    alice, bob, carol = api.user(), api.user(), api.user()
    r = api.money("/api/wallet/transfer", alice, {"receiverId": carol.id, "amount": 5, "senderId": bob.id})
    assert_problem(r, 422, "VALIDATION_FAILED")
    r = api.money("/api/wallet/transfer", alice, {"receiverId": carol.id, "amount": 5, "from": bob.id})
    assert_problem(r, 422, "VALIDATION_FAILED")
    assert api.job_count() == 0
    assert_problem(api.client.request("POST", "/api/wallet/transfer", json_body={"receiverId": carol.id,
                                                                                  "amount": 5}, key="k-1"),
                   401, "UNAUTHORIZED")


def test_a_known_receiver_costs_no_store_read_and_a_new_user_is_found_at_once(api, monkeypatch):
    """Issue 24: users are never deleted, so the accept path remembers the receivers it has
    seen (positive only: an unknown id is read every time, a new user found at once)."""
    from services import wallets

    alice, bob = api.user(), api.user()
    api.fund(alice, 1000)
    reads: list[str] = []
    real = wallets.user_wallet_status
    monkeypatch.setattr(wallets, "user_wallet_status", lambda db, uid: reads.append(uid) or real(db, uid))

    for _ in range(3):
        assert api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 1}).status == 202
    assert reads == [bob.id]  # the first transfer read bob once; the next two read nothing

    for _ in range(2):
        assert_problem(api.money("/api/wallet/transfer", alice, {"receiverId": UNKNOWN_ID, "amount": 1}),
                       422, "RECEIVER_NOT_FOUND")
    assert reads == [bob.id, UNKNOWN_ID, UNKNOWN_ID]  # never remembered as missing

    carol = api.user()  # registered after the cache had its misses
    assert api.money("/api/wallet/transfer", alice, {"receiverId": carol.id, "amount": 1}).status == 202
