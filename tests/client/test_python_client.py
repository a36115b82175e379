"""Issue 16: the Python client (clients/python, ``purser_client``) against the real stack.

Real gunicorn, real Celery workers, real SecantusDB and Redis: the client drives the
acceptance scenario of the API tests over HTTP.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests
from purser_client import Client, InvalidRequest, JobFailed, NotFound, Unauthorized, verify_webhook
from purser_client.webhooks import sign

from tests.support.invariants import assert_money_invariants

PASSWORD = "correct-horse-battery"


def _account(base_url: str, role: str | None = None, db: Any = None) -> tuple[Client, str]:
    email = f"c{uuid.uuid4().hex[:12]}@example.com"
    if role == "admin":
        from services.users import create_user

        user_id = create_user(db, email, PASSWORD, role="admin")["_id"]
    else:
        user_id = Client(base_url).register(email, PASSWORD)["userId"]
    client = Client(base_url)
    client.login(email, PASSWORD)
    return client, user_id


def _settled_balance(client: Client) -> int:
    import time

    for _ in range(200):
        balance = client.balance()
        if balance.incoming == 0:
            return balance.balance
        time.sleep(0.05)
    raise AssertionError("incoming credits never applied")


@pytest.fixture
def stack(web_server, fresh_db, session_worker) -> dict[str, Any]:
    server = web_server(concurrency=2)
    return {"url": server.base_url, "db": fresh_db}


def test_the_acceptance_scenario_through_the_client(stack):
    url, db = stack["url"], stack["db"]
    admin, _ = _account(url, "admin", db)
    fan, fan_id = _account(url)
    creator, creator_id = _account(url)
    admin.set_role(creator_id, "creator")

    funded = admin.wait(admin.credit(fan_id, 1000, "welcome"))
    assert funded.settled and funded.result["amount"] == 1000

    content = creator.publish_content("the scoop", 99)
    unlock = fan.wait(fan.unlock(content["contentId"]), raise_on_failure=True)
    assert unlock.result["split"] == {"creator": 79, "platform:revenue": 15, "platform:processing": 5}
    assert fan.content(content["contentId"])["unlocked"] is True

    # One key, two sends: one job, the second answer a replay of the first.
    first = fan.transfer(creator_id, 100, key="same-key")
    again = fan.transfer(creator_id, 100, key="same-key")
    assert again.replayed and again.job_id == first.job_id
    fan.wait(first, raise_on_failure=True)

    creator.set_plan(50, 30)
    sub = fan.wait(fan.subscribe(creator_id), raise_on_failure=True)
    fan.cancel_subscription(sub.result["subscriptionId"])
    gift = fan.wait(fan.gift(creator_id, 10, "thanks"), raise_on_failure=True)
    assert gift.result["split"] == {"creator": 8, "platform:revenue": 2, "platform:processing": 0}

    assert _settled_balance(fan) == 1000 - 99 - 100 - 50 - 10
    assert _settled_balance(creator) == 79 + 100 + 40 + 8
    assert [t["jobId"] for t in fan.transactions(limit=2)["items"]] == [gift.job_id, sub.job_id]
    assert_money_invariants(db)


def test_refusals_become_typed_errors_with_code_and_request_id(stack):
    url = stack["url"]
    fan, fan_id = _account(url)
    with pytest.raises(InvalidRequest) as refused:
        fan.transfer(fan_id, 10)
    assert refused.value.status == 422 and refused.value.code == "SELF_TRANSFER" and refused.value.request_id
    with pytest.raises(NotFound) as missing:
        fan.job("0" * 24)
    assert missing.value.code == "JOB_NOT_FOUND" and missing.value.request_id
    with pytest.raises(Unauthorized):
        Client(url, token="not-a-token").balance()
    with pytest.raises(InvalidRequest) as bad_amount:
        fan.transfer("a" * 24, 1.0)  # amounts are integers: 1.0 is refused, never rounded
    assert bad_amount.value.code == "VALIDATION_FAILED"

    other, other_id = _account(url)
    broke = fan.transfer(other_id, 5)  # accepted, then refused by the rules: no coins
    with pytest.raises(JobFailed) as failed:
        fan.wait(broke, raise_on_failure=True)
    assert failed.value.code == "INSUFFICIENT_FUNDS"


class _FlakySession(requests.Session):
    """Drops the first POST before it leaves (a connection error) and records every key sent."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str | None] = []
        self.failed_once = False

    def request(self, method, url, **kwargs):  # type: ignore[no-untyped-def,override]
        if method == "POST":
            self.keys.append((kwargs.get("headers") or {}).get("Idempotency-Key"))
            if not self.failed_once:
                self.failed_once = True
                raise requests.ConnectionError("injected: connection reset")
        return super().request(method, url, **kwargs)


def test_a_network_error_is_retried_with_the_same_idempotency_key(stack):
    url, db = stack["url"], stack["db"]
    admin, _ = _account(url, "admin", db)
    session = _FlakySession()
    fan, fan_id = _account(url)
    fan.session = session
    _, friend_id = _account(url)
    admin.wait(admin.credit(fan_id, 100, "seed"))
    job = fan.transfer(friend_id, 30)
    assert len(session.keys) == 2 and session.keys[0] == session.keys[1] is not None
    assert fan.wait(job).settled
    assert db.jobs.count_documents({"ownerId": fan_id, "type": "transfer"}) == 1


def test_webhook_verifier_matches_the_standard_webhooks_vector():
    # The published example of the Standard Webhooks specification (standard-webhooks repo).
    secret, msg_id, stamp = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(stamp), "webhook-signature": f"v1,bogus {expected}"}
    assert verify_webhook(secret, headers, body, now=stamp + 10) == {"test": 2432232314}
    assert sign(secret, msg_id, stamp, body) == expected
    from purser_client import WebhookVerificationError

    for broken in ({**headers, "webhook-signature": "v1,bogus"}, {**headers, "webhook-id": "msg_other"}):
        with pytest.raises(WebhookVerificationError):
            verify_webhook(secret, broken, body, now=stamp)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, headers, body, now=stamp + 3600)  # replayed an hour later
