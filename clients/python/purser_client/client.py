"""A small synchronous client for Purser's HTTP API.

Every money request gets an ``Idempotency-Key`` (a fresh UUID unless given) and is
retried with the SAME key on network errors, 5xx and 409 "still in flight", so a
retry can never create a second charge. :meth:`Client.wait` follows a job with
``Prefer: wait=N`` (the server holds the request until the job is terminal).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import requests

from purser_client.errors import Conflict, JobFailed, PurserError, ServerError, from_response
from purser_client.models import Balance, Job

RETRYABLE = (requests.ConnectionError, requests.Timeout)


class Client:
    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 15.0, retries: int = 3,
                 backoff: float = 0.2, session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.session = session or requests.Session()

    # --- plumbing -----------------------------------------------------------------------

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
                idempotency_key: str | None = None, headers: dict[str, str] | None = None,
                timeout: float | None = None) -> requests.Response:
        """Send one request, retrying transient failures; raise a typed error on 4xx/5xx."""
        sent = dict(headers or {})
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        if idempotency_key:
            sent["Idempotency-Key"] = idempotency_key
        # Without a key, only idempotent methods are retried (a POST might have been applied).
        retry_ok = idempotency_key is not None or method in ("GET", "HEAD", "PUT", "DELETE")
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.session.request(method, self.base_url + path, json=json, params=params,
                                                headers=sent, timeout=timeout or self.timeout)
            except RETRYABLE:
                if not retry_ok or attempt > self.retries:
                    raise
                self._sleep(attempt, None)
                continue
            if response.status_code < 400:
                return response
            error = from_response(response.status_code, _json(response), dict(response.headers))
            transient = isinstance(error, ServerError) or (isinstance(error, Conflict)
                                                           and error.code == "IDEMPOTENCY_KEY_IN_USE")
            if transient and retry_ok and attempt <= self.retries:
                self._sleep(attempt, error.retry_after)
                continue
            raise error

    def _sleep(self, attempt: int, retry_after: float | None) -> None:
        time.sleep(retry_after if retry_after is not None else self.backoff * 2 ** (attempt - 1))

    def _money(self, path: str, body: dict[str, Any], key: str | None) -> Job:
        response = self.request("POST", path, json={k: v for k, v in body.items() if v is not None},
                                idempotency_key=key or str(uuid.uuid4()))
        return Job.from_json(response.json(), replayed=response.headers.get("Idempotent-Replayed") == "true")

    # --- accounts -------------------------------------------------------------------------

    def register(self, email: str, password: str, display_name: str | None = None) -> dict[str, Any]:
        body = {"email": email, "password": password, "displayName": display_name}
        return self.request("POST", "/api/auth/register", json={k: v for k, v in body.items() if v}).json()

    def login(self, email: str, password: str) -> str:
        """Log in and keep the token for later calls; returns it."""
        self.token = self.request("POST", "/api/auth/login", json={"email": email, "password": password}
                                  ).json()["accessToken"]
        return self.token

    def me(self) -> dict[str, Any]:
        return self.request("GET", "/api/me").json()

    # --- wallet ---------------------------------------------------------------------------

    def balance(self) -> Balance:
        return Balance.from_json(self.request("GET", "/api/wallet/balance").json())

    def transactions(self, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        return self.request("GET", "/api/wallet/transactions", params=params).json()

    # --- money (each returns the accepted job; follow it with wait()) -------------------------

    def transfer(self, receiver_id: str, amount: int, note: str | None = None, *, key: str | None = None) -> Job:
        return self._money("/api/wallet/transfer", {"receiverId": receiver_id, "amount": amount, "note": note}, key)

    def unlock(self, content_id: str, *, key: str | None = None) -> Job:
        return self._money("/api/premium/unlock", {"contentId": content_id}, key)

    def subscribe(self, creator_id: str, auto_renew: bool = True, *, key: str | None = None) -> Job:
        return self._money("/api/subscription/subscribe", {"creatorId": creator_id, "autoRenew": auto_renew}, key)

    def gift(self, creator_id: str, amount: int, message: str | None = None, *, key: str | None = None) -> Job:
        return self._money("/api/gifts", {"creatorId": creator_id, "amount": amount, "message": message}, key)

    def payout(self, amount: int, *, key: str | None = None) -> Job:
        return self._money("/api/payouts", {"amount": amount}, key)

    # --- creators -----------------------------------------------------------------------------

    def publish_content(self, title: str, price: int) -> dict[str, Any]:
        return self.request("POST", "/api/premium/content", json={"title": title, "price": price}).json()

    def content(self, content_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/premium/content/{content_id}").json()

    def set_plan(self, price: int, period_days: int) -> dict[str, Any]:
        return self.request("PUT", "/api/subscription/plan", json={"price": price, "periodDays": period_days}).json()

    def subscriptions(self) -> dict[str, Any]:
        return self.request("GET", "/api/subscription").json()

    def cancel_subscription(self, subscription_id: str) -> dict[str, Any]:
        return self.request("POST", "/api/subscription/cancel", json={"subscriptionId": subscription_id}).json()

    # --- admins -------------------------------------------------------------------------------

    def credit(self, user_id: str, amount: int, reason: str, *, key: str | None = None) -> Job:
        return self._money("/api/admin/credit", {"userId": user_id, "amount": amount, "reason": reason}, key)

    def refund(self, job_id: str, reason: str, amount: int | None = None, *, key: str | None = None) -> Job:
        return self._money("/api/admin/refunds", {"jobId": job_id, "amount": amount, "reason": reason}, key)

    def freeze(self, user_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/admin/wallets/{user_id}/freeze").json()

    def unfreeze(self, user_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/admin/wallets/{user_id}/unfreeze").json()

    def set_role(self, user_id: str, role: str) -> dict[str, Any]:
        return self.request("PATCH", f"/api/admin/users/{user_id}", json={"role": role}).json()

    # --- jobs ---------------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        return Job.from_json(self.request("GET", f"/api/jobs/{job_id}").json())

    def wait(self, job: Job | str, timeout: float = 30.0, *, raise_on_failure: bool = False) -> Job:
        """Follow a job until it is settled or failed (``Prefer: wait``, at most 10 s per request)."""
        job_id = job.job_id if isinstance(job, Job) else job
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            hold = max(0, min(10, int(left)))
            current = Job.from_json(self.request("GET", f"/api/jobs/{job_id}", headers={"Prefer": f"wait={hold}"},
                                                 timeout=hold + self.timeout).json())
            if current.done:
                if raise_on_failure and not current.settled:
                    raise JobFailed(current)
                return current
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {current.status} after {timeout}s")


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


__all__ = ["Client", "PurserError"]
