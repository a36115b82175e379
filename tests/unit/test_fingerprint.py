"""The idempotency fingerprint binds route, method and body (issue 17).

A key reused for another route or method with the same body must not replay the
first answer: the fingerprints differ, so the claim is a mismatch (422).
"""

from __future__ import annotations

import hashlib
import json

from flask import Flask

from api.money import fingerprint

BODY = {"toUserId": "u_0002", "amount": 5}


def _fp(path: str, method: str = "POST", body: dict | None = None) -> str:
    with Flask(__name__).test_request_context(path, method=method):
        return fingerprint(BODY if body is None else body)


def test_fingerprint_is_sha256_of_route_method_and_body() -> None:
    canonical = '{"body":{"amount":5,"toUserId":"u_0002"},"method":"POST","route":"/api/wallet/transfer"}'
    assert json.loads(canonical)  # the literal is valid JSON
    assert _fp("/api/wallet/transfer") == hashlib.sha256(canonical.encode()).hexdigest()


def test_same_body_on_another_route_has_another_fingerprint() -> None:
    assert _fp("/api/wallet/transfer") != _fp("/api/gifts")


def test_same_body_with_another_method_has_another_fingerprint() -> None:
    assert _fp("/api/wallet/transfer", "POST") != _fp("/api/wallet/transfer", "PUT")


def test_another_body_has_another_fingerprint() -> None:
    assert _fp("/api/wallet/transfer") != _fp("/api/wallet/transfer", body={**BODY, "amount": 6})
