"""Premium content: publish (creator/admin), read with the caller's access, unlock with the split."""

from __future__ import annotations

from tests.api.helpers import UNKNOWN_ID, Api, User, assert_problem
from tests.support.invariants import assert_money_invariants
from tests.support.journal import ledger_record


def _content(api: Api, creator: User, price: int = 99, title: str = "Behind the scenes") -> dict:
    r = api.send("POST", "/api/premium/content", creator, {"title": title, "price": price})
    assert r.status == 201, r
    return r.json


def test_creators_and_admins_publish_content(api):
    creator, admin = api.user("creator"), api.user("admin")
    body = _content(api, creator, price=250, title="Episode 1")
    assert set(body) == {"contentId", "creatorId", "title", "price"}
    assert body["creatorId"] == creator.id and body["title"] == "Episode 1" and body["price"] == 250
    assert _content(api, admin)["creatorId"] == admin.id


def test_free_and_premium_users_cannot_publish(api):
    for role in ("free", "premium"):
        user = api.user(role)
        assert_problem(api.send("POST", "/api/premium/content", user, {"title": "x", "price": 5}), 403, "FORBIDDEN")
    assert_problem(api.send("POST", "/api/premium/content", None, {"title": "x", "price": 5}), 401, "UNAUTHORIZED")
    assert api.db.contents.count_documents({}) == 0


def test_content_body_is_validated(api):
    creator = api.user("creator")
    for bad in ({"title": "", "price": 5}, {"title": "x", "price": 0}, {"title": "x"},
                {"title": "x", "price": 5, "creatorId": UNKNOWN_ID}, {"title": "x" * 201, "price": 5}):
        assert_problem(api.send("POST", "/api/premium/content", creator, bad), 422, "VALIDATION_FAILED")


def test_get_content_reports_the_callers_access(api):
    creator, fan = api.user("creator"), api.user()
    content = _content(api, creator)
    r = api.get(f"/api/premium/content/{content['contentId']}", fan)
    assert r.status == 200, r
    assert r.json == {**content, "unlocked": False}
    assert api.get(f"/api/premium/content/{content['contentId']}", creator).json["unlocked"] is True
    assert_problem(api.get(f"/api/premium/content/{UNKNOWN_ID}", fan), 404, "CONTENT_NOT_FOUND")
    assert_problem(api.get("/api/premium/content/not-an-id", fan), 404, "CONTENT_NOT_FOUND")
    assert_problem(api.get(f"/api/premium/content/{content['contentId']}"), 401, "UNAUTHORIZED")


def test_unlock_settles_with_the_exact_80_15_5_split(api, fresh_db):
    creator, fan = api.user("creator"), api.user()
    content = _content(api, creator, price=99)
    api.fund(fan, 1000)
    r = api.money("/api/premium/unlock", fan, {"contentId": content["contentId"]})
    assert r.status == 202 and r.json["type"] == "unlock", r
    job = api.expect_settled(fan, r)
    # 99 * 80% = 79.2, * 15% = 14.85, * 5% = 4.95: the two leftover coins go to the largest remainders.
    split = {"creator": 79, "platform:revenue": 15, "platform:processing": 5}
    assert job["result"] == {"amount": 99, "contentId": content["contentId"], "creatorId": creator.id,
                             "split": split}
    assert (api.balance(fan), api.balance(creator)) == (901, 79)
    assert (api.system_balance("platform:revenue"), api.system_balance("platform:processing")) == (15, 5)
    # The operator's view over HTTP: the same figures, buckets summed (the top-up came from funding).
    admin = api.user("admin")
    platform = api.get("/api/admin/system-wallets", admin)
    assert platform.status == 200 and platform.json["currency"] == "COIN", platform
    assert {i["walletId"]: i["balance"] for i in platform.json["items"]} == {
        "platform:revenue": 15, "platform:processing": 5, "external:funding": -1000, "platform:payouts-in-flight": 0}
    assert_problem(api.get("/api/admin/system-wallets", fan), 403, "FORBIDDEN")
    tx = ledger_record(fresh_db, {"jobId": job["jobId"]})
    assert sorted((e["walletId"], e["amount"]) for e in tx["entries"]) == sorted([
        (fan.id, -99), (creator.id, 79), ("platform:revenue", 15), ("platform:processing", 5)])
    assert api.get(f"/api/premium/content/{content['contentId']}", fan).json["unlocked"] is True
    history = api.get("/api/wallet/transactions", fan).json["items"]
    assert (history[0]["type"], history[0]["amount"], history[0]["counterpartyId"]) == ("unlock", -99, creator.id)
    assert_money_invariants(fresh_db)


def test_unlock_refusals_at_accept_time(api):
    creator, fan = api.user("creator"), api.user()
    content = _content(api, creator)
    assert_problem(api.money("/api/premium/unlock", fan, {"contentId": UNKNOWN_ID}), 422, "CONTENT_NOT_FOUND")
    assert_problem(api.money("/api/premium/unlock", creator, {"contentId": content["contentId"]}),
                   422, "OWN_CONTENT")
    assert_problem(api.money("/api/premium/unlock", fan, {"contentId": {"$ne": None}}), 422, "VALIDATION_FAILED")
    assert api.job_count() == 0


def test_second_unlock_fails_already_unlocked_and_charges_once(api, fresh_db):
    creator, fan = api.user("creator"), api.user()
    content = _content(api, creator, price=40)
    api.fund(fan, 100)
    api.expect_settled(fan, api.money("/api/premium/unlock", fan, {"contentId": content["contentId"]}))
    api.expect_failed(fan, api.money("/api/premium/unlock", fan, {"contentId": content["contentId"]}),
                      "ALREADY_UNLOCKED")
    assert api.balance(fan) == 60
    assert fresh_db.unlocks.count_documents({"userId": fan.id}) == 1
    assert_money_invariants(fresh_db)


def test_unlock_without_funds_fails_and_grants_nothing(api, fresh_db):
    creator, fan = api.user("creator"), api.user()
    content = _content(api, creator, price=40)
    api.fund(fan, 39)
    api.expect_failed(fan, api.money("/api/premium/unlock", fan, {"contentId": content["contentId"]}),
                      "INSUFFICIENT_FUNDS")
    assert api.get(f"/api/premium/content/{content['contentId']}", fan).json["unlocked"] is False
    assert api.balance(fan) == 39
    assert_money_invariants(fresh_db)
