"""Fixed test vectors for the provider webhook signature (an independent oracle).

The documented scheme: ``X-Purser-Signature: t=<unix>,v1=<hex>`` where ``<hex>`` is
HMAC-SHA256 keyed with the webhook secret over ``"<t>." + raw body`` (``t.body``).
The expected header below is a literal; the hand computation next to it uses only
``hmac``/``hashlib``, never production code, so a change of the scheme on both the
signing and the verifying side (e.g. ``t:body``) still fails here.
"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from flask import Flask

from api.errors import ApiError
from api.routes import payments

SECRET = "whsec-test-vector-0123456789abcdef"
TIMESTAMP = 1767225600  # 2026-01-01T00:00:00Z
BODY = b'{"userId":"u_0001","amount":2500,"providerTxId":"ptx-42"}'
EXPECTED_HEADER = "t=1767225600,v1=8a244a24c02392c08e732c1b6ccbae19f425361efed77652db3886f8e406df50"
# The same body signed over "t:body" (a plausible wrong scheme): must be refused.
WRONG_SCHEME_HEADER = "t=1767225600,v1=78e1c9ac841c2db7bf616e4e5e264f146591606caf72e8b1a67b3b0912cd444e"


def test_vector_is_the_documented_scheme_computed_by_hand() -> None:
    mac = hmac.new(SECRET.encode("utf-8"), b"1767225600." + BODY, hashlib.sha256).hexdigest()
    assert f"t={TIMESTAMP},v1={mac}" == EXPECTED_HEADER


def test_sign_produces_the_literal_vector() -> None:
    assert payments.sign(SECRET, TIMESTAMP, BODY) == EXPECTED_HEADER


def _verify(header: str, monkeypatch: pytest.MonkeyPatch, now: float = TIMESTAMP + 1, body: bytes = BODY) -> None:
    monkeypatch.setattr(payments.time, "time", lambda: now)
    app = Flask(__name__)
    with app.test_request_context("/api/payments/webhook", method="POST", data=body,
                                  headers={payments.SIGNATURE_HEADER: header,
                                           "Content-Type": "application/json"}):
        payments._verify_signature(SECRET)


def test_verifier_accepts_the_literal_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    _verify(EXPECTED_HEADER, monkeypatch)


@pytest.mark.parametrize("header", [
    WRONG_SCHEME_HEADER,
    EXPECTED_HEADER.replace("v1=8a", "v1=8b"),
    EXPECTED_HEADER.replace("t=1767225600", "t=1767225601"),  # timestamp is bound into the MAC
    "",
    "v1=8a244a24c02392c08e732c1b6ccbae19f425361efed77652db3886f8e406df50",
])
def test_verifier_refuses_other_headers(header: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ApiError) as err:
        _verify(header, monkeypatch)
    assert (err.value.status, err.value.code) == (401, "INVALID_SIGNATURE")


def test_verifier_refuses_a_changed_body(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ApiError):
        _verify(EXPECTED_HEADER, monkeypatch, body=BODY.replace(b"2500", b"25000"))


@pytest.mark.parametrize(("now", "ok"), [
    (TIMESTAMP + 300, True), (TIMESTAMP - 300, True), (TIMESTAMP + 301, False), (TIMESTAMP - 301, False),
])
def test_timestamp_tolerance_is_300_seconds_both_ways(now: int, ok: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if ok:
        _verify(EXPECTED_HEADER, monkeypatch, now=now)
    else:
        with pytest.raises(ApiError):
            _verify(EXPECTED_HEADER, monkeypatch, now=now)
