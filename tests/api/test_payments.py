"""The payment provider's signed top-up webhook."""

from __future__ import annotations

import json
import time
import uuid

from api.routes.payments import sign
from tests.api.helpers import UNKNOWN_ID, assert_problem, signed_webhook
from tests.support.env import TEST_WEBHOOK_SECRET
from tests.support.invariants import assert_money_invariants


def _body(user_id: str, amount: int = 500, ptx: str | None = None) -> dict:
    return {"providerTxId": ptx or f"ptx-{uuid.uuid4().hex}", "userId": user_id, "amount": amount}


def test_good_signature_is_accepted_and_settles(api, fresh_db):
    user = api.user()
    body = _body(user.id, 500)
    r = signed_webhook(api.client, body)
    assert r.status == 202, r
    assert r.json["type"] == "topup" and r.json["status"] == "queued"
    assert r.headers["Location"] == f"/api/jobs/{r.json['jobId']}"
    assert "Idempotent-Replayed" not in r.headers
    job = api.expect_settled(user, r)
    assert job["result"] == {"amount": 500, "providerTxId": body["providerTxId"]}
    assert api.balance(user) == 500
    assert api.system_balance("external:funding") == -500
    item = api.get("/api/wallet/transactions", user).json["items"][0]
    assert (item["type"], item["amount"], item["counterpartyId"]) == ("topup", 500, None)
    assert_money_invariants(fresh_db)


def test_missing_malformed_and_wrong_signatures_are_401(api):
    user = api.user()
    raw = json.dumps(_body(user.id)).encode()
    now = int(time.time())
    other_raw = json.dumps(_body(user.id, 99999)).encode()
    good = sign(TEST_WEBHOOK_SECRET, now, raw)
    cases = {
        "missing": None,
        "empty": "",
        "malformed": "v1=deadbeef",
        "wrong secret": sign("not-the-secret", now, raw),
        "signature of another body": sign(TEST_WEBHOOK_SECRET, now, other_raw),
        "timestamp changed after signing": good.replace(f"t={now}", f"t={now - 1}"),
        "uppercase hex": good.upper().replace("T=", "t=").replace("V1=", "v1="),
        "truncated mac": good[:-2],
    }
    for name, header in cases.items():
        headers = {} if header is None else {"X-Purser-Signature": header}
        r = api.client.request("POST", "/api/payments/webhook", data=raw, content_type="application/json",
                               headers=headers)
        assert r.status == 401, (name, r)
        assert_problem(r, 401, "INVALID_SIGNATURE")
    assert api.job_count() == 0


def test_stale_or_future_timestamps_are_401_even_when_the_mac_is_right(api, fresh_db):
    user = api.user()
    body = _body(user.id)
    now = int(time.time())
    for moment in (now - 310, now - 3600, now + 310):  # 10 s past the window: a loaded machine is slow
        assert_problem(signed_webhook(api.client, body, timestamp=moment), 401, "INVALID_SIGNATURE")
    assert api.job_count() == 0
    # Inside the window (a little clock skew) is fine.
    api.expect_settled(user, signed_webhook(api.client, body, timestamp=now - 250))
    assert api.balance(user) == body["amount"]
    assert_money_invariants(fresh_db)


def test_same_provider_tx_replays_the_first_answer(api, fresh_db):
    user = api.user()
    body = _body(user.id, 700)
    first = signed_webhook(api.client, body)
    assert first.status == 202, first
    api.expect_settled(user, first)
    # A provider retry, signed again later, gets the first answer byte for byte.
    again = signed_webhook(api.client, body, timestamp=int(time.time()) + 1)
    assert again.status == 202, again
    assert again.body == first.body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert api.job_count() == 1
    assert api.balance(user) == 700
    assert_money_invariants(fresh_db)


def test_same_provider_tx_with_another_body_is_422(api, fresh_db):
    user, other = api.user(), api.user()
    body = _body(user.id, 700)
    api.expect_settled(user, signed_webhook(api.client, body))
    for changed in ({**body, "amount": 701}, {**body, "userId": other.id}):
        assert_problem(signed_webhook(api.client, changed), 422, "IDEMPOTENCY_KEY_REUSED")
    assert api.job_count() == 1
    assert (api.balance(user), api.balance(other)) == (700, 0)
    assert_money_invariants(fresh_db)


def test_webhook_validates_the_body_after_the_signature(api):
    user = api.user()
    assert_problem(signed_webhook(api.client, _body(UNKNOWN_ID)), 422, "RECEIVER_NOT_FOUND")
    for bad in ({**_body(user.id), "amount": 0}, {**_body(user.id), "amount": "5"},
                {**_body(user.id), "providerTxId": "has space"}, {**_body(user.id), "userId": {"$ne": None}},
                {**_body(user.id), "extra": 1}):
        assert_problem(signed_webhook(api.client, bad), 422, "VALIDATION_FAILED")
    assert_problem(signed_webhook(api.client, b"{not json"), 400, "MALFORMED_JSON")
    assert api.job_count() == 0
