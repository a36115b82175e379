"""The shortest end-to-end path: register, top up, transfer, settled by a worker."""

from __future__ import annotations

from tests.support.env import TEST_WEBHOOK_SECRET
from tests.support.invariants import assert_money_invariants
from tests.support.journal import ledger_record


def test_topup_then_transfer_settles_with_exact_balances(app_client, fresh_db):
    alice, bob = app_client.register(), app_client.register()
    r = app_client.topup(TEST_WEBHOOK_SECRET, alice["userId"], 1000)
    assert r.status == 202, r
    assert app_client.wait_job(alice["token"], r.json["jobId"])["status"] == "settled"
    r = app_client.money("/api/wallet/transfer", alice["token"], {"receiverId": bob["userId"], "amount": 250})
    assert r.status == 202 and r.headers["Location"] == f"/api/jobs/{r.json['jobId']}"
    job = app_client.wait_job(alice["token"], r.json["jobId"])
    assert job["status"] == "settled" and job["result"] == {"amount": 250, "receiverId": bob["userId"]}
    assert app_client.balance(alice["token"]) == 750
    assert app_client.balance(bob["token"]) == 250
    tx = ledger_record(fresh_db, {"jobId": job["jobId"]})
    assert sorted((e["walletId"], e["amount"]) for e in tx["entries"]) == sorted(
        [(alice["userId"], -250), (bob["userId"], 250)])
    assert_money_invariants(fresh_db)
