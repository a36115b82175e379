"""Helpers for the API suites: users with tokens, funding, settling, problem checks.

Users are registered through the real ``POST /api/auth/register``; their token is
minted with the API's own :func:`api.auth.issue_token` and the test secret, which
is what ``/api/auth/login`` answers (login itself is covered in ``test_auth``).
This saves one argon2 verification per user, which adds up on a 2-core machine.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pymongo.database import Database

from api.auth import issue_token
from api.routes.payments import sign
from infra.config import get_settings
from services import users
from tests.support.client import ApiClient, Response
from tests.support.env import TEST_WEBHOOK_SECRET

PASSWORD = "correct-horse-9"
PROBLEM_FIELDS = ("type", "title", "status", "detail", "code", "requestId")
UNKNOWN_ID = "0123456789abcdef01234567"  # well-formed, never issued by ObjectId() in a test run
SPLIT_PARTIES = ("creator", "platform:revenue", "platform:processing")


@dataclass(frozen=True)
class User:
    id: str
    email: str
    token: str
    role: str
    password: str = PASSWORD


def mint_token(user_id: str, role: str) -> str:
    """A token exactly as ``/api/auth/login`` issues it."""
    return issue_token(get_settings(), user_id, role)[0]


def assert_problem(r: Response, status: int, code: str | None = None) -> dict[str, Any]:
    """``r`` is an RFC 9457 problem with ``status`` and ``code`` and the request id; return its body."""
    assert r.status == status, r
    content_type = r.headers.get("Content-Type", "")
    assert content_type.startswith("application/problem+json"), (content_type, r)
    body = r.json
    assert isinstance(body, dict), r
    for name in PROBLEM_FIELDS:
        assert name in body, (name, body)
    assert body["status"] == status
    assert body["requestId"] and body["requestId"] == r.headers.get("X-Request-ID"), (body, dict(r.headers))
    if code is not None:
        assert body["code"] == code, body
    for leak in ("Traceback", "<html", "<!doctype"):
        assert leak.lower() not in r.body.decode("utf-8", "replace").lower(), r
    return body


def signed_webhook(client: ApiClient, body: dict[str, Any] | bytes, *, secret: str = TEST_WEBHOOK_SECRET,
                   timestamp: int | None = None, signature: str | None = None) -> Response:
    """POST the provider webhook with a valid (or the given) signature."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    header = signature if signature is not None else sign(secret, timestamp or int(time.time()), raw)
    return client.request("POST", "/api/payments/webhook", data=raw, content_type="application/json",
                          headers={"X-Purser-Signature": header})


class Api:
    """The suites' view of the stack: an :class:`ApiClient` plus the test database."""

    def __init__(self, client: ApiClient, db: Database) -> None:
        self.client = client
        self.db = db

    # --- users ---------------------------------------------------------------------

    def user(self, role: str = "free") -> User:
        email = f"u{uuid.uuid4().hex[:12]}@example.com"
        r = self.client.request("POST", "/api/auth/register", json_body={"email": email, "password": PASSWORD})
        assert r.status == 201, r
        user_id = r.json["userId"]
        if role != "free":
            assert users.set_role(self.db, user_id, role) is not None
        return User(user_id, email, mint_token(user_id, role), role)

    # --- requests ------------------------------------------------------------------

    def get(self, path: str, user: User | None = None, headers: dict[str, str] | None = None) -> Response:
        return self.client.request("GET", path, token=user.token if user else None, headers=headers)

    def send(self, method: str, path: str, user: User | None, body: Any = None,
             key: str | None = None) -> Response:
        return self.client.request(method, path, json_body=body, token=user.token if user else None, key=key)

    def money(self, path: str, user: User, body: dict[str, Any], key: str | None = None) -> Response:
        return self.client.money(path, user.token, body, key)

    # --- jobs ----------------------------------------------------------------------

    def wait(self, user: User, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        job = self.client.wait_job(user.token, job_id, timeout=timeout)
        assert job["status"] in ("settled", "failed"), f"job {job_id} still {job['status']} after {timeout}s"
        return job

    def settle(self, user: User, r: Response) -> dict[str, Any]:
        """The terminal job of an accepted money request ``r``."""
        assert r.status == 202, r
        assert r.headers["Location"] == f"/api/jobs/{r.json['jobId']}"
        return self.wait(user, r.json["jobId"])

    def expect_settled(self, user: User, r: Response) -> dict[str, Any]:
        job = self.settle(user, r)
        assert job["status"] == "settled" and job["error"] is None, job
        return job

    def expect_failed(self, user: User, r: Response, code: str) -> dict[str, Any]:
        job = self.settle(user, r)
        assert job["status"] == "failed", job
        assert job["error"]["code"] == code and job["error"]["message"], job
        assert job["result"] is None and job["settledAt"], job
        return job

    # --- money ---------------------------------------------------------------------

    def topup(self, user: User, amount: int, provider_tx_id: str | None = None) -> Response:
        body = {"providerTxId": provider_tx_id or f"ptx-{uuid.uuid4().hex}", "userId": user.id, "amount": amount}
        return signed_webhook(self.client, body)

    def fund(self, user: User, amount: int) -> None:
        self.expect_settled(user, self.topup(user, amount))

    def balance(self, user: User) -> int:
        return self.client.balance(user.token)

    def system_balance(self, wallet_id: str) -> int:
        from tests.support.settle import system_balances

        return system_balances(self.db)[wallet_id]

    def job_count(self, **query: Any) -> int:
        return self.db.jobs.count_documents(query)
