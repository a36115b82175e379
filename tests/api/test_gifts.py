"""Gifts to creators: split 80/15/5, accept-time refusals, balance failures."""

from __future__ import annotations

from tests.api.helpers import UNKNOWN_ID, assert_problem
from tests.support.invariants import assert_money_invariants


def test_gift_settles_with_exact_split(api, fresh_db):
    creator, fan = api.user("creator"), api.user()
    api.fund(fan, 2000)
    r = api.money("/api/gifts", fan, {"creatorId": creator.id, "amount": 1001, "message": "for the stream"})
    assert r.status == 202 and r.json["type"] == "gift", r
    job = api.expect_settled(fan, r)
    # 800.8 / 150.15 / 50.05: the one leftover coin goes to the largest remainder (creator).
    assert job["result"] == {"amount": 1001, "creatorId": creator.id,
                             "split": {"creator": 801, "platform:revenue": 150, "platform:processing": 50}}
    assert (api.balance(fan), api.balance(creator)) == (999, 801)
    assert (api.system_balance("platform:revenue"), api.system_balance("platform:processing")) == (150, 50)
    theirs = api.get("/api/wallet/transactions", creator).json["items"][0]
    assert (theirs["type"], theirs["amount"], theirs["counterpartyId"]) == ("gift", 801, fan.id)
    assert_money_invariants(fresh_db)


def test_small_gift_split_still_sums_to_the_gross(api, fresh_db):
    creator, fan = api.user("creator"), api.user()
    api.fund(fan, 10)
    job = api.expect_settled(fan, api.money("/api/gifts", fan, {"creatorId": creator.id, "amount": 1}))
    assert job["result"]["split"] == {"creator": 1, "platform:revenue": 0, "platform:processing": 0}
    job = api.expect_settled(fan, api.money("/api/gifts", fan, {"creatorId": creator.id, "amount": 3}))
    assert sum(job["result"]["split"].values()) == 3
    assert api.balance(fan) == 6
    assert_money_invariants(fresh_db)


def test_gift_refusals_at_accept_time(api):
    creator, fan = api.user("creator"), api.user()
    assert_problem(api.money("/api/gifts", fan, {"creatorId": fan.id, "amount": 5}), 422, "SELF_TRANSFER")
    assert_problem(api.money("/api/gifts", fan, {"creatorId": UNKNOWN_ID, "amount": 5}), 422, "RECEIVER_NOT_FOUND")
    assert_problem(api.money("/api/gifts", fan, {"creatorId": creator.id, "amount": 5, "message": "x" * 501}),
                   422, "VALIDATION_FAILED")
    assert_problem(api.money("/api/gifts", fan, {"creatorId": creator.id}), 422, "VALIDATION_FAILED")
    assert api.job_count() == 0


def test_gift_without_funds_fails_as_a_job(api, fresh_db):
    creator, fan = api.user("creator"), api.user()
    api.fund(fan, 4)
    api.expect_failed(fan, api.money("/api/gifts", fan, {"creatorId": creator.id, "amount": 5}),
                      "INSUFFICIENT_FUNDS")
    assert (api.balance(fan), api.balance(creator)) == (4, 0)
    assert_money_invariants(fresh_db)
