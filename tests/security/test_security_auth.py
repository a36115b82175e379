"""Token attacks, insecure direct object references and webhook forgery, over HTTP."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest

from api.routes.payments import sign
from infra.config import get_settings
from tests.support.env import TEST_JWT_SECRET, TEST_WEBHOOK_SECRET

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The HMAC key is .* below the minimum")]


def _claims(user_id: str, role: str = "free", **over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": user_id, "role": role, "iat": now, "exp": now + 600, "iss": get_settings().jwt_issuer}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tamper_role(token: str, role: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = role
    return ".".join([header, _b64(json.dumps(claims).encode()), signature])


def _problem(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status == status, r
    assert r.headers["Content-Type"].startswith("application/problem+json"), r.headers
    if code:
        assert r.json["code"] == code, r.json
    return r.json


# ---------------------------------------------------------------------------------- tokens

ATTACKS = {
    "alg-none": lambda c: jwt.encode(_claims(c.fan.id, "admin"), None, algorithm="none"),
    "alg-none-unsigned-manual": lambda c: ".".join([_b64(b'{"alg":"none","typ":"JWT"}'),
                                                     _b64(json.dumps(_claims(c.fan.id, "admin")).encode()), ""]),
    "wrong-key": lambda c: jwt.encode(_claims(c.fan.id, "admin"), "not-the-secret-" * 4, algorithm="HS256"),
    "other-algorithm-same-key": lambda c: jwt.encode(_claims(c.fan.id), TEST_JWT_SECRET, algorithm="HS512"),
    "expired": lambda c: jwt.encode(_claims(c.fan.id, exp=int(time.time()) - 3600), TEST_JWT_SECRET,
                                    algorithm="HS256"),
    "no-expiry": lambda c: jwt.encode(_claims(c.fan.id, exp=None), TEST_JWT_SECRET, algorithm="HS256"),
    "wrong-issuer": lambda c: jwt.encode(_claims(c.fan.id, iss="evil"), TEST_JWT_SECRET, algorithm="HS256"),
    "sub-operator": lambda c: jwt.encode(_claims({"$ne": None}), TEST_JWT_SECRET, algorithm="HS256"),  # type: ignore[arg-type]
    "sub-system-wallet": lambda c: jwt.encode(_claims("platform:revenue"), TEST_JWT_SECRET, algorithm="HS256"),
    "unknown-role": lambda c: jwt.encode(_claims(c.fan.id, "root"), TEST_JWT_SECRET, algorithm="HS256"),
    "tampered-role-claim": lambda c: _tamper_role(c.fan.token, "admin"),
    "truncated-signature": lambda c: c.fan.token[:-6],
    "garbage": lambda c: "not.a.jwt",
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("route", ["GET /api/me", "GET /api/wallet/balance", "POST /api/admin/credit"])
def test_forged_or_broken_tokens_are_refused(target, attack, route):
    method, path = route.split(" ")
    token = ATTACKS[attack](target.cast)
    before = target.snapshot()
    body = {"userId": target.cast.fan.id, "amount": 1_000_000, "reason": "x"} if method == "POST" else None
    r = target.http.request(method, path, json_body=body, token=token, key=uuid.uuid4().hex if body else None)
    problem = _problem(r, 401, None)
    assert problem["code"] == "UNAUTHORIZED"
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert target.snapshot() == before


def test_expired_token_says_so(target):
    token = ATTACKS["expired"](target.cast)
    r = target.http.request("GET", "/api/me", token=token)
    assert "expired" in _problem(r, 401)["detail"].lower()


@pytest.mark.parametrize("header", ["Basic Zm9vOmJhcg==", "Bearer", "Bearer    ", "Token abc", "bearer x.y.z"])
def test_malformed_authorization_headers(target, header):
    r = target.http.request("GET", "/api/me", headers={"Authorization": header})
    _problem(r, 401, "UNAUTHORIZED")


def test_a_token_in_the_query_string_is_ignored(target):
    r = target.http.request("GET", f"/api/me?access_token={target.cast.fan.token}")
    _problem(r, 401, "UNAUTHORIZED")


def test_a_stale_admin_claim_does_not_open_admin_routes(target):
    """A correctly signed token that says admin for a user whose stored role is free
    (demoted after the token was issued) is refused on every privileged route."""
    c = target.cast
    stale = jwt.encode(_claims(c.other.id, "admin"), TEST_JWT_SECRET, algorithm="HS256")
    before = target.snapshot()
    for method, path, body in [
        ("PATCH", f"/api/admin/users/{c.other.id}", {"role": "admin"}),
        ("POST", "/api/admin/credit", {"userId": c.other.id, "amount": 1000, "reason": "self-service"}),
        ("POST", f"/api/admin/wallets/{c.fan.id}/freeze", None),
        ("PUT", "/api/subscription/plan", {"price": 1, "periodDays": 1}),
        ("POST", "/api/premium/content", {"title": "t", "price": 1}),
    ]:
        r = target.http.request(method, path, json_body=body, token=stale, key=uuid.uuid4().hex)
        _problem(r, 403, "FORBIDDEN")
    assert target.snapshot() == before
    assert target.db.users.find_one({"_id": c.other.id})["role"] == "free"


# ------------------------------------------------------------------------------------ IDOR


def test_another_users_job_is_not_found(target):
    c = target.cast
    r = target.http.job(c.other, c.fan_job_id)
    _problem(r, 404, "JOB_NOT_FOUND")
    r = target.http.request("GET", f"/api/jobs/{c.fan_job_id}", token=c.other.token, headers={"Prefer": "wait=1"})
    _problem(r, 404, "JOB_NOT_FOUND")
    r = target.http.request("GET", "/api/jobs?limit=100", token=c.other.token)
    assert r.status == 200 and c.fan_job_id not in {j["jobId"] for j in r.json["items"]}
    # Control: the owner and an admin do see it.
    assert target.http.job(c.fan, c.fan_job_id).status == 200
    assert target.http.job(c.admin, c.fan_job_id).status == 200


def test_another_users_subscription_cannot_be_cancelled(target):
    c = target.cast
    before = target.db.subscriptions.find_one({"_id": c.fan_subscription_id})
    for who in (c.other, c.creator):
        r = target.http.request("POST", "/api/subscription/cancel", json_body={"subscriptionId": c.fan_subscription_id},
                                token=who.token)
        _problem(r, 404, "SUBSCRIPTION_NOT_FOUND")
    assert target.db.subscriptions.find_one({"_id": c.fan_subscription_id}) == before
    r = target.http.request("GET", "/api/subscription", token=c.other.token)
    assert r.status == 200 and r.json["items"] == []


def test_history_and_balance_are_the_callers_own(target):
    c = target.cast
    r = target.http.request("GET", "/api/wallet/balance", token=c.other.token)
    assert r.status == 200 and r.json["userId"] == c.other.id
    r = target.http.request("GET", "/api/wallet/transactions", token=c.other.token)
    assert r.status == 200 and r.json["items"] == []
    r = target.http.request("GET", f"/api/premium/content/{c.content_id}", token=c.other.token)
    assert r.status == 200 and r.json["unlocked"] is False  # the fan's unlock is not the other's


@pytest.mark.parametrize("who", ["fan", "creator"])
def test_admin_routes_refuse_non_admins(target, who):
    c = target.cast
    caller = getattr(c, who)
    before = target.snapshot()
    wallet = target.db.wallets.find_one({"_id": c.other.id})
    for method, path, body in [
        ("PATCH", f"/api/admin/users/{caller.id}", {"role": "admin"}),
        ("PATCH", f"/api/admin/users/{c.other.id}", {"role": "creator"}),
        ("POST", "/api/admin/credit", {"userId": caller.id, "amount": 1000, "reason": "please"}),
        ("POST", f"/api/admin/wallets/{c.other.id}/freeze", None),
        ("POST", f"/api/admin/wallets/{c.other.id}/unfreeze", None),
    ]:
        r = target.http.request(method, path, json_body=body, token=caller.token, key=uuid.uuid4().hex)
        _problem(r, 403, "FORBIDDEN")
    assert target.snapshot() == before
    assert target.db.wallets.find_one({"_id": c.other.id}) == wallet
    assert target.db.users.find_one({"_id": caller.id})["role"] == caller.role


def test_creator_routes_refuse_fans(target):
    c = target.cast
    r = target.http.request("PUT", "/api/subscription/plan", json_body={"price": 1, "periodDays": 1}, token=c.fan.token)
    _problem(r, 403, "FORBIDDEN")
    r = target.http.request("POST", "/api/premium/content", json_body={"title": "t", "price": 1}, token=c.fan.token)
    _problem(r, 403, "FORBIDDEN")


# --------------------------------------------------------------------------------- webhook


def _hook(target: Any, raw: bytes, signature: str | None) -> Any:
    headers = {"X-Purser-Signature": signature} if signature is not None else {}
    return target.http.request("POST", "/api/payments/webhook", data=raw, content_type="application/json",
                               headers=headers)


def _body(target: Any, amount: int = 700, ptx: str | None = None) -> bytes:
    return json.dumps({"providerTxId": ptx or f"ptx-{uuid.uuid4().hex}", "userId": target.cast.fan.id,
                       "amount": amount}).encode()


FORGERIES = {
    "missing": lambda raw, now: None,
    "empty": lambda raw, now: "",
    "malformed": lambda raw, now: "sha256=deadbeef",
    "wrong-secret": lambda raw, now: sign("not-the-provider-secret", now, raw),
    "other-body": lambda raw, now: sign(TEST_WEBHOOK_SECRET, now, raw.replace(b"700", b"7")),
    "stale-timestamp": lambda raw, now: sign(TEST_WEBHOOK_SECRET, now - 301, raw),
    "future-timestamp": lambda raw, now: sign(TEST_WEBHOOK_SECRET, now + 301, raw),
    "timestamp-swapped": lambda raw, now: sign(TEST_WEBHOOK_SECRET, now, raw).replace(f"t={now}", f"t={now - 1}"),
    "uppercase-hex": lambda raw, now: sign(TEST_WEBHOOK_SECRET, now, raw).upper().replace("T=", "t="),
    "two-signatures": lambda raw, now: sign(TEST_WEBHOOK_SECRET, now, raw) + ",v1=" + "0" * 64,
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_webhooks_are_refused(target, forgery):
    raw = _body(target)
    before = target.snapshot()
    r = _hook(target, raw, FORGERIES[forgery](raw, int(time.time())))
    _problem(r, 401, "INVALID_SIGNATURE")
    assert target.snapshot() == before


def test_a_replayed_webhook_credits_once(target):
    raw = _body(target, 700)
    signature = sign(TEST_WEBHOOK_SECRET, int(time.time()), raw)
    before = target.snapshot()
    first = _hook(target, raw, signature)
    assert first.status == 202, first
    replays = [_hook(target, raw, signature) for _ in range(3)]
    for r in replays:
        assert r.status == 202 and r.json["jobId"] == first.json["jobId"], r
        assert r.headers.get("Idempotent-Replayed") == "true"
    after = target.snapshot()
    assert after["counts"]["jobs"] == before["counts"]["jobs"] + 1
    # The same provider transaction with another amount, correctly signed: refused.
    tampered = raw.replace(b'"amount": 700', b'"amount": 70000')
    r = _hook(target, tampered, sign(TEST_WEBHOOK_SECRET, int(time.time()), tampered))
    _problem(r, 422, "IDEMPOTENCY_KEY_REUSED")
    assert target.snapshot()["counts"] == after["counts"]
    # A capture replayed after the tolerance window is refused outright.
    old = int(time.time()) - 400
    r = _hook(target, raw, sign(TEST_WEBHOOK_SECRET, old, raw))
    _problem(r, 401, "INVALID_SIGNATURE")
    for key in target.redis.scan_iter(match="purser:ring:*"):
        target.redis.delete(key)
