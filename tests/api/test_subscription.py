"""Creator plans, subscribing with the revenue split, cancelling and listing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.api.helpers import UNKNOWN_ID, Api, User, assert_problem
from tests.support.invariants import assert_money_invariants


def _plan(api: Api, creator: User, price: int = 100, period_days: int = 30) -> dict:
    r = api.send("PUT", "/api/subscription/plan", creator, {"price": price, "periodDays": period_days})
    assert r.status == 200, r
    return r.json


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_plan_is_set_by_creators_only(api):
    creator, fan, premium = api.user("creator"), api.user(), api.user("premium")
    assert _plan(api, creator, 100, 30) == {"creatorId": creator.id, "price": 100, "periodDays": 30,
                                            "isActive": True}
    assert _plan(api, creator, 120, 7)["price"] == 120  # PUT replaces
    assert api.db.plans.find_one({"_id": creator.id})["periodDays"] == 7
    for user in (fan, premium):
        r = api.send("PUT", "/api/subscription/plan", user, {"price": 100, "periodDays": 30})
        assert_problem(r, 403, "FORBIDDEN")
    for bad in ({"price": 100, "periodDays": 0}, {"price": 0, "periodDays": 30}, {"price": 100},
                {"price": 100, "periodDays": 30, "creatorId": fan.id}, {"price": 100, "periodDays": 367}):
        assert_problem(api.send("PUT", "/api/subscription/plan", creator, bad), 422, "VALIDATION_FAILED")


def test_subscribe_settles_with_split_and_grants_access(api, fresh_db):
    creator, fan = api.user("creator"), api.user()
    _plan(api, creator, price=100, period_days=30)
    content = api.send("POST", "/api/premium/content", creator, {"title": "members", "price": 500}).json
    api.fund(fan, 250)
    before = datetime.now(UTC)
    r = api.money("/api/subscription/subscribe", fan, {"creatorId": creator.id})
    assert r.status == 202 and r.json["type"] == "subscribe", r
    job = api.expect_settled(fan, r)
    result = job["result"]
    assert result["amount"] == 100 and result["creatorId"] == creator.id
    assert result["split"] == {"creator": 80, "platform:revenue": 15, "platform:processing": 5}
    assert (api.balance(fan), api.balance(creator)) == (150, 80)
    assert (api.system_balance("platform:revenue"), api.system_balance("platform:processing")) == (15, 5)

    listed = api.get("/api/subscription", fan)
    assert listed.status == 200, listed
    [sub] = listed.json["items"]
    assert sub["subscriptionId"] == result["subscriptionId"]
    assert (sub["creatorId"], sub["subscriberId"], sub["status"], sub["autoRenew"]) == (
        creator.id, fan.id, "active", True)
    assert (sub["price"], sub["periodDays"], sub["renewals"]) == (100, 30, 0)
    expires = _parse(sub["expiresAt"])
    assert before + timedelta(days=30) - timedelta(minutes=5) < expires < before + timedelta(days=30, minutes=5)
    # An active subscriber reads the creator's premium content without unlocking it.
    assert api.get(f"/api/premium/content/{content['contentId']}", fan).json["unlocked"] is True
    assert api.get("/api/subscription", creator).json["items"] == []
    assert_money_invariants(fresh_db)


def test_subscribe_without_auto_renew(api, fresh_db):
    creator, fan = api.user("creator"), api.user()
    _plan(api, creator, price=10)
    api.fund(fan, 10)
    api.expect_settled(fan, api.money("/api/subscription/subscribe", fan, {"creatorId": creator.id,
                                                                           "autoRenew": False}))
    assert api.get("/api/subscription", fan).json["items"][0]["autoRenew"] is False
    assert api.balance(fan) == 0
    assert_money_invariants(fresh_db)


def test_subscribe_refusals_at_accept_time(api):
    creator, fan = api.user("creator"), api.user()
    assert_problem(api.money("/api/subscription/subscribe", fan, {"creatorId": creator.id}), 422, "NO_PLAN")
    assert_problem(api.money("/api/subscription/subscribe", fan, {"creatorId": UNKNOWN_ID}),
                   422, "RECEIVER_NOT_FOUND")
    _plan(api, creator)
    assert_problem(api.money("/api/subscription/subscribe", creator, {"creatorId": creator.id}),
                   422, "SELF_TRANSFER")
    assert_problem(api.money("/api/subscription/subscribe", fan, {"creatorId": creator.id, "autoRenew": "yes"}),
                   422, "VALIDATION_FAILED")
    assert api.job_count() == 0


def test_second_subscription_fails_already_subscribed(api, fresh_db):
    creator, fan = api.user("creator"), api.user()
    _plan(api, creator, price=30)
    api.fund(fan, 100)
    api.expect_settled(fan, api.money("/api/subscription/subscribe", fan, {"creatorId": creator.id}))
    api.expect_failed(fan, api.money("/api/subscription/subscribe", fan, {"creatorId": creator.id}),
                      "ALREADY_SUBSCRIBED")
    assert api.balance(fan) == 70
    assert len(api.get("/api/subscription", fan).json["items"]) == 1
    assert_money_invariants(fresh_db)


def test_subscribe_without_funds_fails(api, fresh_db):
    creator, fan = api.user("creator"), api.user()
    _plan(api, creator, price=30)
    api.expect_failed(fan, api.money("/api/subscription/subscribe", fan, {"creatorId": creator.id}),
                      "INSUFFICIENT_FUNDS")
    assert api.get("/api/subscription", fan).json["items"] == []
    assert_money_invariants(fresh_db)


def test_cancel_stops_auto_renew_and_only_the_subscriber_can_cancel(api, fresh_db):
    creator, fan, other = api.user("creator"), api.user(), api.user()
    _plan(api, creator, price=20)
    api.fund(fan, 20)
    job = api.expect_settled(fan, api.money("/api/subscription/subscribe", fan, {"creatorId": creator.id}))
    sub_id = job["result"]["subscriptionId"]

    for intruder in (other, creator):
        assert_problem(api.send("POST", "/api/subscription/cancel", intruder, {"subscriptionId": sub_id}),
                       404, "SUBSCRIPTION_NOT_FOUND")
        assert api.get("/api/subscription", intruder).json["items"] == []
    assert api.db.subscriptions.find_one({"_id": sub_id})["autoRenew"] is True

    r = api.send("POST", "/api/subscription/cancel", fan, {"subscriptionId": sub_id})
    assert r.status == 200, r
    assert r.json["subscriptionId"] == sub_id and r.json["autoRenew"] is False and r.json["status"] == "active"
    assert api.get("/api/subscription", fan).json["items"][0]["autoRenew"] is False
    # Cancelling again is harmless; access lasts until expiresAt.
    assert api.send("POST", "/api/subscription/cancel", fan, {"subscriptionId": sub_id}).status == 200
    assert_problem(api.send("POST", "/api/subscription/cancel", fan, {"subscriptionId": UNKNOWN_ID}),
                   404, "SUBSCRIPTION_NOT_FOUND")
    assert_problem(api.send("POST", "/api/subscription/cancel", fan, {"subscriptionId": {"$ne": None}}),
                   422, "VALIDATION_FAILED")
    assert_money_invariants(fresh_db)
