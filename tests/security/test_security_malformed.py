"""A catalog of malformed and hostile requests against a real gunicorn.

Each one must get the 4xx the OpenAPI document promises for that operation, as
``application/problem+json`` with a stable ``code`` and the request id, and must
leave no trace: no document written in any collection, no message in any queue,
no ring flag.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from api.routes.payments import sign
from tests.support.env import TEST_WEBHOOK_SECRET

pytestmark = pytest.mark.slow

Body = Callable[[Any], Any] | None


@dataclass(frozen=True)
class Bad:
    id: str
    method: str
    path: str  # may contain {fan} {other} {creator} {content} {job} {sub}
    status: int
    code: str
    json: Body = None  # a JSON-able body, built from the cast
    raw: Callable[[Any], bytes] | None = None  # raw bytes instead (invalid JSON, huge, ...)
    content_type: str | None = "application/json"
    who: str | None = "fan"  # whose token; None = anonymous
    key: str | None = "fresh"  # Idempotency-Key: "fresh" = a new valid key, None = none, else literal
    signed: bool = False  # webhook: sign the raw body with the provider secret
    op: str | None = None  # OpenAPI path template, when the route exists

    def __str__(self) -> str:
        return self.id


def _transfer(**fields: Any) -> Body:
    def build(c: Any) -> dict[str, Any]:
        body = {"receiverId": c.other.id, "amount": 5}
        body.update({k: (v(c) if callable(v) else v) for k, v in fields.items()})
        return {k: v for k, v in body.items() if v is not _DROP}
    return build


_DROP = object()
T = "/api/wallet/transfer"


def _raw_transfer(amount_literal: str) -> Callable[[Any], bytes]:
    return lambda c: f'{{"receiverId": "{c.other.id}", "amount": {amount_literal}}}'.encode()


CATALOG: list[Bad] = [
    # --- amounts: integers in coins only -------------------------------------------------
    Bad("amount-string", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount="10"), op=T),
    Bad("amount-float", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount=1.5), op=T),
    Bad("amount-integral-float", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount=10.0), op=T),
    Bad("amount-bool", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount=True), op=T),
    Bad("amount-negative", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount=-5), op=T),
    Bad("amount-zero", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount=0), op=T),
    Bad("amount-above-max", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount=1_000_000_001), op=T),
    Bad("amount-huge", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount=10**40), op=T),
    Bad("amount-exponent-overflow", "POST", T, 422, "VALIDATION_FAILED", raw=_raw_transfer("1e400"), op=T),
    Bad("amount-null", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount=None), op=T),
    Bad("amount-array", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount=[10]), op=T),
    Bad("amount-operator", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount={"$gt": 0}), op=T),
    Bad("amount-NaN", "POST", T, 400, "MALFORMED_JSON", raw=_raw_transfer("NaN"), op=T),
    Bad("amount-Infinity", "POST", T, 400, "MALFORMED_JSON", raw=_raw_transfer("Infinity"), op=T),
    Bad("amount-minus-Infinity", "POST", T, 400, "MALFORMED_JSON", raw=_raw_transfer("-Infinity"), op=T),
    # --- ids: 24 lowercase hex, never an object, an operator or a system account ----------
    Bad("receiver-operator-object", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(receiverId={"$ne": None}),
        op=T),
    Bad("receiver-operator-string", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(receiverId="$ne"), op=T),
    Bad("receiver-regex-object", "POST", T, 422, "VALIDATION_FAILED",
        json=_transfer(receiverId={"$regex": ".*"}), op=T),
    Bad("receiver-system-wallet", "POST", T, 422, "VALIDATION_FAILED",
        json=_transfer(receiverId="platform:revenue"), op=T),
    Bad("receiver-trailing-newline", "POST", T, 422, "VALIDATION_FAILED",
        json=_transfer(receiverId=lambda c: c.other.id + "\n"), op=T),
    Bad("receiver-uppercase", "POST", T, 422, "VALIDATION_FAILED",
        json=_transfer(receiverId=lambda c: c.other.id.upper()), op=T),
    Bad("receiver-unknown", "POST", T, 422, "RECEIVER_NOT_FOUND", json=_transfer(receiverId="0" * 24), op=T),
    Bad("receiver-self", "POST", T, 422, "SELF_TRANSFER", json=_transfer(receiverId=lambda c: c.fan.id), op=T),
    Bad("unlock-content-operator", "POST", "/api/premium/unlock", 422, "VALIDATION_FAILED",
        json=lambda c: {"contentId": {"$gt": ""}}, op="/api/premium/unlock"),
    Bad("unlock-content-where", "POST", "/api/premium/unlock", 422, "VALIDATION_FAILED",
        json=lambda c: {"contentId": {"$where": "sleep(1000)"}}, op="/api/premium/unlock"),
    Bad("unlock-content-unknown", "POST", "/api/premium/unlock", 422, "CONTENT_NOT_FOUND",
        json=lambda c: {"contentId": "f" * 24}, op="/api/premium/unlock"),
    Bad("unlock-own-content", "POST", "/api/premium/unlock", 422, "OWN_CONTENT", who="creator",
        json=lambda c: {"contentId": c.content_id}, op="/api/premium/unlock"),
    Bad("gift-creator-array", "POST", "/api/gifts", 422, "VALIDATION_FAILED",
        json=lambda c: {"creatorId": [c.creator.id], "amount": 5}, op="/api/gifts"),
    Bad("subscribe-creator-operator", "POST", "/api/subscription/subscribe", 422, "VALIDATION_FAILED",
        json=lambda c: {"creatorId": {"$exists": True}}, op="/api/subscription/subscribe"),
    Bad("subscribe-autorenew-string", "POST", "/api/subscription/subscribe", 422, "VALIDATION_FAILED",
        json=lambda c: {"creatorId": c.creator.id, "autoRenew": "yes"}, op="/api/subscription/subscribe"),
    Bad("subscribe-no-plan", "POST", "/api/subscription/subscribe", 422, "NO_PLAN",
        json=lambda c: {"creatorId": c.other.id}, op="/api/subscription/subscribe"),
    Bad("cancel-subscription-operator", "POST", "/api/subscription/cancel", 422, "VALIDATION_FAILED", key=None,
        json=lambda c: {"subscriptionId": {"$ne": None}}, op="/api/subscription/cancel"),
    # --- operator documents in every free-text field ---------------------------------------
    Bad("transfer-note-operator", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(note={"$gt": ""}), op=T),
    Bad("transfer-note-too-long", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(note="x" * 501), op=T),
    Bad("gift-message-operator", "POST", "/api/gifts", 422, "VALIDATION_FAILED",
        json=lambda c: {"creatorId": c.creator.id, "amount": 5, "message": {"$where": "1"}}, op="/api/gifts"),
    Bad("content-title-operator", "POST", "/api/premium/content", 422, "VALIDATION_FAILED", who="creator", key=None,
        json=lambda c: {"title": {"$ne": None}, "price": 10}, op="/api/premium/content"),
    Bad("content-price-float", "POST", "/api/premium/content", 422, "VALIDATION_FAILED", who="creator", key=None,
        json=lambda c: {"title": "t", "price": 9.99}, op="/api/premium/content"),
    Bad("plan-period-zero", "PUT", "/api/subscription/plan", 422, "VALIDATION_FAILED", who="creator", key=None,
        json=lambda c: {"price": 10, "periodDays": 0}, op="/api/subscription/plan"),
    Bad("plan-price-bool", "PUT", "/api/subscription/plan", 422, "VALIDATION_FAILED", who="creator", key=None,
        json=lambda c: {"price": True, "periodDays": 30}, op="/api/subscription/plan"),
    Bad("register-email-operator", "POST", "/api/auth/register", 422, "VALIDATION_FAILED", who=None, key=None,
        json=lambda c: {"email": {"$ne": None}, "password": "correct-horse-9"}, op="/api/auth/register"),
    Bad("register-password-operator", "POST", "/api/auth/register", 422, "VALIDATION_FAILED", who=None, key=None,
        json=lambda c: {"email": "x@example.com", "password": {"$gt": ""}}, op="/api/auth/register"),
    Bad("register-self-promotion", "POST", "/api/auth/register", 422, "VALIDATION_FAILED", who=None, key=None,
        json=lambda c: {"email": "boss@example.com", "password": "correct-horse-9", "role": "admin"},
        op="/api/auth/register"),
    Bad("login-operator-bypass", "POST", "/api/auth/login", 422, "VALIDATION_FAILED", who=None, key=None,
        json=lambda c: {"email": {"$ne": None}, "password": {"$ne": None}}, op="/api/auth/login"),
    Bad("login-regex-email", "POST", "/api/auth/login", 401, "INVALID_CREDENTIALS", who=None, key=None,
        json=lambda c: {"email": ".*", "password": "correct-horse-9"}, op="/api/auth/login"),
    Bad("webhook-provider-tx-operator", "POST", "/api/payments/webhook", 422, "VALIDATION_FAILED", who=None,
        key=None, signed=True, json=lambda c: {"providerTxId": {"$ne": None}, "userId": c.fan.id, "amount": 5},
        op="/api/payments/webhook"),
    Bad("webhook-credit-system-wallet", "POST", "/api/payments/webhook", 422, "VALIDATION_FAILED", who=None,
        key=None, signed=True, json=lambda c: {"providerTxId": "p-1", "userId": "external:funding", "amount": 5},
        op="/api/payments/webhook"),
    Bad("webhook-amount-float", "POST", "/api/payments/webhook", 422, "VALIDATION_FAILED", who=None, key=None,
        signed=True, json=lambda c: {"providerTxId": "p-2", "userId": c.fan.id, "amount": 5.5},
        op="/api/payments/webhook"),
    Bad("admin-credit-reason-operator", "POST", "/api/admin/credit", 422, "VALIDATION_FAILED", who="admin",
        json=lambda c: {"userId": c.fan.id, "amount": 5, "reason": {"$ne": None}}, op="/api/admin/credit"),
    Bad("admin-role-not-in-enum", "PATCH", "/api/admin/users/{fan}", 422, "VALIDATION_FAILED", who="admin",
        key=None, json=lambda c: {"role": "superuser"}, op="/api/admin/users/{userId}"),
    # --- body shape ----------------------------------------------------------------------------
    Bad("unknown-field", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(fee=0), op=T),
    Bad("missing-field", "POST", T, 422, "VALIDATION_FAILED", json=_transfer(amount=_DROP), op=T),
    Bad("body-array", "POST", T, 422, "VALIDATION_FAILED", json=lambda c: [c.other.id, 5], op=T),
    Bad("body-null", "POST", T, 422, "VALIDATION_FAILED", raw=lambda c: b"null", op=T),
    Bad("body-string", "POST", T, 422, "VALIDATION_FAILED", raw=lambda c: b'"transfer"', op=T),
    Bad("body-empty", "POST", T, 400, "MALFORMED_JSON", raw=lambda c: b"", op=T),
    Bad("body-truncated", "POST", T, 400, "MALFORMED_JSON", raw=lambda c: b'{"receiverId": ', op=T),
    Bad("duplicate-keys", "POST", T, 400, "MALFORMED_JSON",
        raw=lambda c: f'{{"receiverId": "{c.other.id}", "amount": 5, "amount": 500}}'.encode(), op=T),
    Bad("invalid-utf8", "POST", T, 400, "MALFORMED_JSON",
        raw=lambda c: b'{"receiverId": "\xff\xfe", "amount": 5}', op=T),
    Bad("utf16-body", "POST", T, 400, "MALFORMED_JSON",
        raw=lambda c: json.dumps({"receiverId": c.other.id, "amount": 5}).encode("utf-16"), op=T),
    Bad("deep-nesting", "POST", T, 400, "MALFORMED_JSON", raw=lambda c: b"[" * 5000 + b"]" * 5000, op=T),
    Bad("body-17KB", "POST", T, 413, "PAYLOAD_TOO_LARGE", json=_transfer(note="x" * 17_000), op=T),
    Bad("body-1MB", "POST", T, 413, "PAYLOAD_TOO_LARGE",
        raw=lambda c: f'{{"receiverId": "{c.other.id}", "amount": 5, "note": "{"x" * 1_048_576}"}}'.encode(),
        op=T),
    # --- content type ------------------------------------------------------------------------
    Bad("no-content-type", "POST", T, 415, "UNSUPPORTED_MEDIA_TYPE", json=_transfer(), content_type=None, op=T),
    Bad("text-plain", "POST", T, 415, "UNSUPPORTED_MEDIA_TYPE", json=_transfer(), content_type="text/plain", op=T),
    Bad("form-urlencoded", "POST", T, 415, "UNSUPPORTED_MEDIA_TYPE", raw=lambda c: b"receiverId=x&amount=5",
        content_type="application/x-www-form-urlencoded", op=T),
    Bad("json-lookalike-type", "POST", T, 415, "UNSUPPORTED_MEDIA_TYPE", json=_transfer(),
        content_type="application/jsonp", op=T),
    # --- idempotency key -------------------------------------------------------------------
    Bad("key-missing", "POST", T, 400, "IDEMPOTENCY_KEY_REQUIRED", json=_transfer(), key=None, op=T),
    Bad("key-too-long", "POST", T, 400, "IDEMPOTENCY_KEY_INVALID", json=_transfer(), key="k" * 256, op=T),
    Bad("key-with-space", "POST", T, 400, "IDEMPOTENCY_KEY_INVALID", json=_transfer(), key="two words", op=T),
    Bad("key-non-ascii", "POST", T, 400, "IDEMPOTENCY_KEY_INVALID", json=_transfer(), key="cl\u00e9", op=T),
    Bad("key-empty", "POST", T, 400, "IDEMPOTENCY_KEY_INVALID", json=_transfer(), key="", op=T),
    # --- query strings -----------------------------------------------------------------------
    Bad("jobs-limit-string", "GET", "/api/jobs?limit=abc", 422, "VALIDATION_FAILED", key=None, op="/api/jobs"),
    Bad("jobs-limit-zero", "GET", "/api/jobs?limit=0", 422, "VALIDATION_FAILED", key=None, op="/api/jobs"),
    Bad("jobs-limit-huge", "GET", "/api/jobs?limit=100000", 422, "VALIDATION_FAILED", key=None, op="/api/jobs"),
    Bad("jobs-status-operator", "GET", "/api/jobs?status[$ne]=settled", 422, "VALIDATION_FAILED", key=None,
        op="/api/jobs"),
    Bad("jobs-status-unknown", "GET", "/api/jobs?status=stuck", 422, "VALIDATION_FAILED", key=None, op="/api/jobs"),
    Bad("jobs-cursor-operator", "GET", "/api/jobs?cursor=%24ne", 422, "VALIDATION_FAILED", key=None,
        op="/api/jobs"),
    Bad("history-cursor-forged", "GET", "/api/wallet/transactions?cursor=eDp5", 422, "VALIDATION_FAILED",
        key=None, op="/api/wallet/transactions"),
    # --- routes and methods ------------------------------------------------------------------
    Bad("unknown-route", "GET", "/api/nope", 404, "NOT_FOUND", key=None),
    Bad("path-traversal", "GET", "/api/jobs/..%2F..%2Fetc%2Fpasswd", 404, "NOT_FOUND", key=None),
    Bad("job-id-operator", "GET", "/api/jobs/%7B%22%24ne%22%3Anull%7D", 404, "JOB_NOT_FOUND", key=None,
        op="/api/jobs/{jobId}"),
    Bad("job-id-unknown", "GET", "/api/jobs/" + "0" * 24, 404, "JOB_NOT_FOUND", key=None, op="/api/jobs/{jobId}"),
    Bad("content-id-unknown", "GET", "/api/premium/content/" + "0" * 24, 404, "CONTENT_NOT_FOUND", key=None,
        op="/api/premium/content/{contentId}"),
    Bad("admin-user-id-operator", "PATCH", "/api/admin/users/$ne", 404, "USER_NOT_FOUND", who="admin", key=None,
        json=lambda c: {"role": "admin"}, op="/api/admin/users/{userId}"),
    Bad("get-on-transfer", "GET", T, 405, "METHOD_NOT_ALLOWED", key=None),
    Bad("delete-jobs", "DELETE", "/api/jobs", 405, "METHOD_NOT_ALLOWED", key=None),
    Bad("put-balance", "PUT", "/api/wallet/balance", 405, "METHOD_NOT_ALLOWED", key=None, json=lambda c: {}),
    Bad("trace-health", "TRACE", "/api/health", 405, "METHOD_NOT_ALLOWED", key=None, who=None),
]


def test_the_trace_check_sees_an_accepted_request(target):
    """Control: the same snapshot does see a request that is accepted."""
    before = target.snapshot()
    r = target.http.money("/api/wallet/transfer", target.cast.fan, {"receiverId": target.cast.other.id, "amount": 1})
    assert r.status == 202, r
    after = target.snapshot()
    assert after["counts"]["jobs"] == before["counts"]["jobs"] + 1
    assert after["counts"]["keyed_jobs"] == before["counts"]["keyed_jobs"] + 1  # the job holds its key
    assert sum(after["queues"].values()) == sum(before["queues"].values()) + 1 or after["rings"] != before["rings"]
    assert after["rings"], "the doorbell's ring flag is missing"
    for key in after["rings"]:  # it would expire in the middle of a later comparison
        target.redis.delete(key)


def test_the_catalog_is_big_enough():
    assert len(CATALOG) >= 40
    assert len({b.id for b in CATALOG}) == len(CATALOG)


@pytest.fixture(scope="module")
def spec(target: Any) -> dict[str, Any]:
    r = target.http.request("GET", "/api/openapi.json")
    assert r.status == 200, r
    return r.json


def _send(target: Any, bad: Bad) -> Any:
    c = target.cast
    path = bad.path.format(fan=c.fan.id, other=c.other.id, creator=c.creator.id, content=c.content_id,
                           job=c.fan_job_id, sub=c.fan_subscription_id)
    data = bad.raw(c) if bad.raw else (json.dumps(bad.json(c)).encode() if bad.json else None)
    headers: dict[str, str] = {}
    if data is not None and bad.content_type:
        headers["Content-Type"] = bad.content_type
    if bad.who:
        headers["Authorization"] = f"Bearer {getattr(c, bad.who).token}"
    if bad.key == "fresh":
        headers["Idempotency-Key"] = f"bad-{uuid.uuid4().hex}"
    elif bad.key is not None:
        headers["Idempotency-Key"] = bad.key
    if bad.signed:
        headers["X-Purser-Signature"] = sign(TEST_WEBHOOK_SECRET, int(time.time()), data or b"")
    headers["X-Request-ID"] = f"sec-{bad.id}"
    return target.http.request(bad.method, path, data=data, headers=headers)


@pytest.mark.parametrize("bad", CATALOG, ids=str)
def test_malformed_request_is_refused_and_leaves_no_trace(target, spec, bad):
    before = target.snapshot()
    r = _send(target, bad)
    assert r.status == bad.status, r
    assert r.headers["Content-Type"].startswith("application/problem+json"), r.headers
    problem = r.json
    assert problem["status"] == bad.status and problem["code"] == bad.code, problem
    assert {"type", "title", "detail", "requestId"} <= set(problem)
    assert problem["requestId"] == r.headers["X-Request-ID"] == f"sec-{bad.id}"
    assert "Traceback" not in r.body.decode(errors="replace")
    if bad.op is not None:
        documented = spec["paths"][bad.op][bad.method.lower()]["responses"]
        assert str(bad.status) in documented, f"{bad.status} is not documented for {bad.method} {bad.op}"
    if bad.status == 405:
        assert r.headers.get("Allow"), "405 without Allow"
    assert target.snapshot() == before, "a refused request left a trace"
