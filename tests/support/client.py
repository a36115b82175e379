"""The one HTTP client of the test suites.

:class:`ApiClient` speaks to a real server (``base_url``: gunicorn started by a
fixture) or to a Flask app's test client (``flask_client``) with the same calls
and the same :class:`Response`. Over HTTP it is thread-safe (one keep-alive
session per thread), and a transport error (refused connection, timeout) is an
answer with status 0 and ``error`` set, not an exception: load and chaos tests
count those like any other answer, and an assertion on the status shows the error.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Protocol

import requests

from api.routes.payments import sign
from tests.support.env import TEST_WEBHOOK_SECRET

TERMINAL = ("settled", "failed")


class HasToken(Protocol):
    token: str


def _token(who: str | HasToken | None) -> str | None:
    return who if who is None or isinstance(who, str) else who.token


class Response:
    def __init__(self, status: int, headers: Any, body: bytes, error: str | None = None) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.error = error  # a transport error: status 0

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.error or self.body[:300]!r}>"


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

    def __init__(self, base_url: str | None = None, flask_client: Any = None, timeout: float = 60.0) -> None:
        assert (base_url is None) != (flask_client is None)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.flask = flask_client
        self.timeout = timeout
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                headers: dict[str, str] | None = None, token: str | HasToken | None = None,
                key: str | None = None, content_type: str | None = None,
                timeout: float | None = None) -> Response:
        data, headers = prepare(json_body, data, headers, _token(token), key, content_type)
        if self.flask is not None:
            r = self.flask.open(path, method=method, data=data, headers=headers)
            return Response(r.status_code, r.headers, r.get_data())
        try:
            r = self._session().request(method, f"{self.base_url}{path}", data=data, headers=headers,
                                        timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            self._local.session = None  # a broken keep-alive connection must not be reused
            return Response(0, {}, b"", error=f"{type(exc).__name__}: {exc}"[:300])
        return Response(r.status_code, r.headers, r.content)

    def close(self) -> None:
        """Close this thread's keep-alive connection (an idle one holds gunicorn's graceful stop)."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    # --- users --------------------------------------------------------------------

    def register(self, email: str | None = None, password: str = "correct-horse-9") -> dict[str, Any]:
        """Register and log in through the API; the body of the 201 plus ``token`` and ``password``."""
        email = email or f"u{uuid.uuid4().hex[:12]}@example.com"
        r = self.request("POST", "/api/auth/register", json_body={"email": email, "password": password})
        assert r.status == 201, r
        return {**r.json, "token": self.login(email, password), "password": password}

    def login(self, email: str, password: str) -> str:
        r = self.request("POST", "/api/auth/login", json_body={"email": email, "password": password})
        assert r.status == 200, r
        return r.json["accessToken"]

    # --- money --------------------------------------------------------------------

    def money(self, path: str, who: str | HasToken, body: dict[str, Any], key: str | None = None) -> Response:
        """A money POST as ``who`` (a token or anything with ``.token``), with a fresh key unless given."""
        return self.request("POST", path, json_body=body, token=who, key=key or uuid.uuid4().hex)

    def webhook(self, user_id: str, amount: int, provider_tx_id: str | None = None, timestamp: int | None = None,
                secret: str = TEST_WEBHOOK_SECRET) -> Response:
        """A provider top-up, signed as the payment provider signs it."""
        raw = json.dumps({"providerTxId": provider_tx_id or f"ptx-{uuid.uuid4().hex}", "userId": user_id,
                          "amount": amount}).encode()
        stamp = int(time.time()) if timestamp is None else timestamp
        return self.request("POST", "/api/payments/webhook", data=raw, content_type="application/json",
                            headers={"X-Purser-Signature": sign(secret, stamp, raw)})

    def topup(self, secret: str, user_id: str, amount: int, provider_tx_id: str | None = None) -> Response:
        return self.webhook(user_id, amount, provider_tx_id, secret=secret)

    # --- reading back -------------------------------------------------------------

    def job(self, who: str | HasToken, job_id: str, wait: int = 0) -> Response:
        headers = {"Prefer": f"wait={wait}"} if wait else None
        return self.request("GET", f"/api/jobs/{job_id}", token=who, headers=headers)

    def wait_job(self, who: str | HasToken, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        """The job once terminal (or as it is after ``timeout``), waiting server-side (``Prefer: wait``)."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.job(who, job_id, wait=5)
            assert r.status == 200, r
            if r.json["status"] in TERMINAL or time.monotonic() > deadline:
                return r.json

    def balance(self, who: str | HasToken, timeout: float = 30.0) -> int:
        """The spendable balance once every credit settled for the wallet was applied.

        A credit from another partition's batch shows as ``incoming`` until the owner
        partition applies it (sub-second); the tests assert final balances.
        """
        deadline = time.monotonic() + timeout
        while True:
            r = self.request("GET", "/api/wallet/balance", token=who)
            assert r.status == 200, r
            if r.json.get("incoming", 0) == 0 or time.monotonic() > deadline:
                return r.json["balance"]
            time.sleep(0.05)
