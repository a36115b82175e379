"""A thin API client over either the Flask test client or a real HTTP server."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import requests

from api.routes.payments import sign


class Response:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


def prepare(json_body: Any = None, data: bytes | None = None, headers: dict[str, str] | None = None,
            token: str | None = None, key: str | None = None,
            content_type: str | None = None) -> tuple[bytes | None, dict[str, str]]:
    """The body and headers of a Purser request: bearer token, idempotency key, JSON."""
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if key:
        headers["Idempotency-Key"] = key
    if json_body is not None:
        data = json.dumps(json_body).encode()
        content_type = content_type or "application/json"
    if content_type:
        headers["Content-Type"] = content_type
    return data, headers


class ApiClient:
    """Speaks to ``base_url`` over HTTP (requests) or to a Flask app's test client."""

    def __init__(self, base_url: str | None = None, flask_client: Any = None) -> None:
        assert (base_url is None) != (flask_client is None)
        self.base_url = base_url
        self.flask = flask_client
        self.session = requests.Session() if base_url else None

    def request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                headers: dict[str, str] | None = None, token: str | None = None,
                key: str | None = None, content_type: str | None = None) -> Response:
        data, headers = prepare(json_body, data, headers, token, key, content_type)
        if self.flask is not None:
            r = self.flask.open(path, method=method, data=data, headers=headers)
            return Response(r.status_code, r.headers, r.get_data())
        assert self.session is not None
        r = self.session.request(method, self.base_url + path, data=data, headers=headers, timeout=30)
        return Response(r.status_code, r.headers, r.content)

    # --- conveniences -------------------------------------------------------------

    def register(self, email: str | None = None, password: str = "correct-horse-9") -> dict[str, Any]:
        email = email or f"u{uuid.uuid4().hex[:12]}@example.com"
        r = self.request("POST", "/api/auth/register", json_body={"email": email, "password": password})
        assert r.status == 201, r
        r2 = self.request("POST", "/api/auth/login", json_body={"email": email, "password": password})
        assert r2.status == 200, r2
        return {**r.json, "token": r2.json["accessToken"], "password": password}

    def login(self, email: str, password: str) -> str:
        r = self.request("POST", "/api/auth/login", json_body={"email": email, "password": password})
        assert r.status == 200, r
        return r.json["accessToken"]

    def money(self, path: str, token: str, body: dict[str, Any], key: str | None = None) -> Response:
        return self.request("POST", path, json_body=body, token=token, key=key or uuid.uuid4().hex)

    def topup(self, secret: str, user_id: str, amount: int, provider_tx_id: str | None = None) -> Response:
        raw = json.dumps({"providerTxId": provider_tx_id or f"ptx-{uuid.uuid4().hex}", "userId": user_id,
                          "amount": amount}).encode()
        return self.request("POST", "/api/payments/webhook", data=raw, content_type="application/json",
                            headers={"X-Purser-Signature": sign(secret, int(time.time()), raw)})

    def wait_job(self, token: str, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            r = self.request("GET", f"/api/jobs/{job_id}", token=token, headers={"Prefer": "wait=5"})
            assert r.status == 200, r
            if r.json["status"] in ("settled", "failed") or time.monotonic() > deadline:
                return r.json

    def balance(self, token: str, timeout: float = 30.0) -> int:
        """The spendable balance once every credit settled for the wallet was applied.

        A credit from another partition's batch shows as ``incoming`` until the owner
        partition applies it (sub-second); the tests assert final balances.
        """
        deadline = time.monotonic() + timeout
        while True:
            r = self.request("GET", "/api/wallet/balance", token=token)
            assert r.status == 200, r
            if r.json.get("incoming", 0) == 0 or time.monotonic() > deadline:
                return r.json["balance"]
            time.sleep(0.05)
