"""Operator actions: credits, wallet freezes, admin-only access, demotion."""

from __future__ import annotations

from tests.api.helpers import UNKNOWN_ID, assert_problem
from tests.support.invariants import assert_money_invariants


def test_admin_credit_settles(api, fresh_db):
    admin, user = api.user("admin"), api.user()
    r = api.money("/api/admin/credit", admin, {"userId": user.id, "amount": 500, "reason": "goodwill"})
    assert r.status == 202, r
    assert r.json["type"] == "credit"
    job = api.expect_settled(admin, r)
    assert job["result"] == {"amount": 500}
    assert api.balance(user) == 500
    item = api.get("/api/wallet/transactions", user).json["items"][0]
    assert (item["type"], item["amount"]) == ("credit", 500)
    assert_money_invariants(fresh_db)


def test_admin_credit_is_validated(api):
    admin = api.user("admin")
    assert_problem(api.money("/api/admin/credit", admin, {"userId": UNKNOWN_ID, "amount": 5, "reason": "x"}),
                   422, "RECEIVER_NOT_FOUND")
    assert_problem(api.money("/api/admin/credit", admin, {"userId": "external:funding", "amount": 5, "reason": "x"}),
                   422, "VALIDATION_FAILED")
    assert_problem(api.money("/api/admin/credit", admin, {"userId": admin.id, "amount": 5}),
                   422, "VALIDATION_FAILED")
    assert api.job_count() == 0


def test_non_admins_get_403_everywhere_admin(api):
    target = api.user()
    for role in ("free", "premium", "creator"):
        user = api.user(role)
        assert_problem(api.money("/api/admin/credit", user, {"userId": user.id, "amount": 5, "reason": "x"}),
                       403, "FORBIDDEN")
        for action in ("freeze", "unfreeze"):
            assert_problem(api.send("POST", f"/api/admin/wallets/{target.id}/{action}", user), 403, "FORBIDDEN")
        assert_problem(api.send("PATCH", f"/api/admin/users/{user.id}", user, {"role": "admin"}), 403, "FORBIDDEN")
    assert api.job_count() == 0
    assert api.db.wallets.find_one({"_id": target.id})["status"] == "active"


def test_freeze_fails_jobs_with_wallet_frozen_and_unfreeze_restores(api, fresh_db):
    admin, alice, bob = api.user("admin"), api.user(), api.user()
    api.fund(alice, 100)
    api.fund(bob, 100)
    r = api.send("POST", f"/api/admin/wallets/{alice.id}/freeze", admin)
    assert r.status == 200, r
    assert r.json == {"userId": alice.id, "walletId": alice.id, "status": "frozen"}
    assert api.get("/api/wallet/balance", alice).json["status"] == "frozen"

    # Money out of and into a frozen wallet fails; the accept still answers 202.
    api.expect_failed(alice, api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 10}),
                      "WALLET_FROZEN")
    api.expect_failed(bob, api.money("/api/wallet/transfer", bob, {"receiverId": alice.id, "amount": 10}),
                      "WALLET_FROZEN")
    api.expect_failed(alice, api.topup(alice, 5), "WALLET_FROZEN")
    assert (api.balance(alice), api.balance(bob)) == (100, 100)

    r = api.send("POST", f"/api/admin/wallets/{alice.id}/unfreeze", admin)
    assert r.status == 200 and r.json["status"] == "active", r
    api.expect_settled(alice, api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 10}))
    assert (api.balance(alice), api.balance(bob)) == (90, 110)
    assert_money_invariants(fresh_db)


def test_freeze_unknown_user_is_404(api):
    admin = api.user("admin")
    for path in (f"/api/admin/wallets/{UNKNOWN_ID}/freeze", "/api/admin/wallets/platform:revenue/freeze",
                 f"/api/admin/wallets/{UNKNOWN_ID}/unfreeze"):
        assert_problem(api.send("POST", path, admin), 404, "USER_NOT_FOUND")
    assert api.db.wallets.find_one({"_id": "platform:revenue"}) is None or \
        api.db.wallets.find_one({"_id": "platform:revenue"}).get("status", "active") == "active"


def test_demoted_admin_loses_access_immediately(api, fresh_db):
    boss, admin, user = api.user("admin"), api.user("admin"), api.user()
    job = api.expect_settled(user, api.topup(user, 50))
    assert api.get(f"/api/jobs/{job['jobId']}", admin).status == 200
    r = api.send("PATCH", f"/api/admin/users/{admin.id}", boss, {"role": "free"})
    assert r.status == 200 and r.json["role"] == "free", r

    # The demoted admin's token still says "admin" and has not expired.
    assert_problem(api.money("/api/admin/credit", admin, {"userId": user.id, "amount": 5, "reason": "x"}),
                   403, "FORBIDDEN")
    assert_problem(api.send("POST", f"/api/admin/wallets/{user.id}/freeze", admin), 403, "FORBIDDEN")
    assert_problem(api.send("PATCH", f"/api/admin/users/{admin.id}", admin, {"role": "admin"}), 403, "FORBIDDEN")
    assert_problem(api.get(f"/api/jobs/{job['jobId']}", admin), 404, "JOB_NOT_FOUND")
    assert api.get("/api/me", admin).json["role"] == "free"
    assert api.balance(user) == 50
    assert_money_invariants(fresh_db)
