"""Job webhooks end to end (issue 16, item 1): real gunicorn, workers, beat and a receiver process.

Every signature is checked with ``purser_client``'s verifier, a separate package with
its own HMAC code (itself checked against the Standard Webhooks example), never with
the signer under test.
"""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from purser_client import verify_webhook

from tests.support.client import ApiClient
from tests.support.env import child_env
from tests.support.invariants import assert_money_invariants
from tests.support.seeding import User, seed_users
from tests.support.stack import Web
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

ALL_JOB_EVENTS = ["job.settled", "job.failed"]


def register(s: Any, path: str, types: list[str] | None = None) -> tuple[str, str]:
    r = s.http.request("POST", "/api/admin/webhooks", token=s.admin,
                       json_body={"url": s.receiver.url(path), "eventTypes": types or ALL_JOB_EVENTS})
    assert r.status == 201, r
    assert r.json["secret"].startswith("whsec_") and r.headers["Location"].endswith(r.json["webhookId"])
    return r.json["webhookId"], r.json["secret"]


def fund(s: Any, amount: int) -> tuple[User, str]:
    """A new user topped up by the provider; the settled top-up's job id."""
    user = seed_users(s.db, 1)[0]
    r = s.http.webhook(user.id, amount)
    assert r.status == 202, r
    assert s.http.wait_job(s.admin, r.json["jobId"])["status"] == "settled"
    return user, r.json["jobId"]


def transfer(s: Any, fan: User, to: User, amount: int) -> str:
    r = s.http.money("/api/wallet/transfer", fan, {"receiverId": to.id, "amount": amount})
    assert r.status == 202, r
    return r.json["jobId"]


def deliveries(s: Any, webhook_id: str) -> list[dict[str, Any]]:
    r = s.http.request("GET", f"/api/admin/webhooks/{webhook_id}/deliveries?limit=100", token=s.admin)
    assert r.status == 200, r
    return r.json["items"]


def settled_deliveries(s: Any, webhook_id: str, count: int, status: str = "delivered",
                       timeout: float = 30) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        items = deliveries(s, webhook_id)
        done = [d for d in items if d["status"] == status]
        return items if len(done) >= count else None
    return wait_for(probe, timeout, poll=0.2, what=f"{count} {status} deliveries of {webhook_id}")  # type: ignore[return-value]


def verified(s: Any, path: str, secrets: list[str]) -> list[tuple[dict[str, str], dict[str, Any]]]:
    """Every request ``path`` received, each checked against every one of ``secrets``."""
    out = []
    for record in s.receiver.received(path):
        payloads = [verify_webhook(secret, record["headers"], record["body"], now=record["receivedAt"])
                    for secret in secrets]
        assert all(p == payloads[0] for p in payloads)
        out.append((record, payloads[0]))
    return out


def test_every_terminal_job_reaches_every_endpoint_once_with_a_valid_signature(hooks: Any) -> None:
    s = hooks
    endpoints = [register(s, "/all-a"), register(s, "/all-b")]
    fan, topup = fund(s, 100)
    friend = seed_users(s.db, 1)[0]
    jobs = {topup: "settled"}
    for amount in (10, 20, 30):
        jobs[transfer(s, fan, friend, amount)] = "settled"
    jobs[transfer(s, fan, friend, 1000)] = "failed"  # INSUFFICIENT_FUNDS
    for job_id, status in jobs.items():
        assert s.http.wait_job(s.admin, job_id)["status"] == status

    for (webhook_id, secret), path in zip(endpoints, ("/all-a", "/all-b"), strict=True):
        log = settled_deliveries(s, webhook_id, len(jobs))
        assert len(log) == len(jobs) and all(d["attempts"] == 1 and d["log"][0]["statusCode"] == 204 for d in log)
        got = verified(s, path, [secret])
        assert Counter(p["data"]["jobId"] for _, p in got) == Counter(list(jobs)), "each job exactly once"
        for record, payload in got:
            job_id = payload["data"]["jobId"]
            assert record["headers"]["webhook-id"] == payload["id"] == f"evt_{job_id}"
            assert payload["type"] == f"job.{jobs[job_id]}" and payload["data"]["status"] == jobs[job_id]
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", payload["timestamp"])
            assert record["headers"]["content-type"] == "application/json"
        failed = next(p for _, p in got if p["type"] == "job.failed")
        assert failed["data"]["error"]["code"] == "INSUFFICIENT_FUNDS"
    assert_money_invariants(s.db, accepted_job_ids=set(jobs))


def test_a_failing_receiver_is_retried_with_backoff_and_retry_after_then_succeeds(hooks: Any) -> None:
    s = hooks
    before = attempt_counts(s)
    s.receiver.script("/flaky", fail=3, status=503, retryAfter="2")
    s.receiver.script("/down", fail=1000, status=500)
    flaky, secret = register(s, "/flaky", ["job.settled"])
    down, _ = register(s, "/down", ["job.settled"])
    _, topup = fund(s, 50)

    [done] = settled_deliveries(s, flaky, 1, timeout=40)
    assert done["jobId"] == topup and done["attempts"] == 4 and done["deliveredAt"]
    assert [e["statusCode"] for e in done["log"]] == [204, 503, 503, 503]  # newest first
    got = verified(s, "/flaky", [secret])
    assert [r["status"] for r, _ in got] == [503, 503, 503, 204]
    assert len({r["headers"]["webhook-id"] for r, _ in got}) == 1 and len({r["body"] for r, _ in got}) == 1
    gaps = [b["receivedAt"] - a["receivedAt"] for (a, _), (b, _) in zip(got, got[1:], strict=False)]
    assert all(gap >= 1.8 for gap in gaps), f"Retry-After: 2 outweighs the 1 s schedule: {gaps}"

    # The schedule spent (1 + 4 attempts), the delivery fails for good and is tried no more.
    [gave_up] = settled_deliveries(s, down, 1, status="failed", timeout=40)
    assert gave_up["attempts"] == 5 and gave_up["nextAttemptAt"] is None
    assert [e["statusCode"] for e in gave_up["log"]] == [500] * 5
    assert len(s.receiver.received("/down")) == 5
    # The webhooks worker counts what each attempt made of its delivery (an operator's view).
    after = attempt_counts(s)
    assert {k: after.get(k, 0) - before.get(k, 0) for k in ("pending", "delivered", "failed")} == {
        "pending": 3 + 4, "delivered": 1, "failed": 1}, (before, after)
    assert_money_invariants(s.db)


def attempt_counts(s: Any) -> dict[str, float]:
    url = f"http://127.0.0.1:{s.env['WEBHOOKS_METRICS_PORT']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^purser_webhook_attempts_total\{result="(\w+)"\} (\S+)$', text, re.M)}


def test_a_refund_reaches_an_endpoint_that_asked_for_money_back_events_only(hooks: Any) -> None:
    s = hooks
    refunds, secret = register(s, "/money-back", ["refund.settled"])
    fan, _ = fund(s, 100)
    friend = seed_users(s.db, 1)[0]
    original = transfer(s, fan, friend, 40)
    assert s.http.wait_job(s.admin, original)["status"] == "settled"
    r = s.http.money("/api/admin/refunds", s.admin, {"jobId": original, "amount": 15, "reason": "duplicate"})
    assert r.status == 202, r
    refund = r.json["jobId"]
    assert s.http.wait_job(s.admin, refund)["status"] == "settled"

    [delivery] = settled_deliveries(s, refunds, 1)
    assert delivery["jobId"] == refund and delivery["type"] == "refund.settled"
    [(record, payload)] = verified(s, "/money-back", [secret])
    assert payload["type"] == "refund.settled" and record["headers"]["webhook-id"] == f"evt_{refund}_refund"
    assert payload["data"]["jobId"] == refund and payload["data"]["type"] == "refund"
    assert payload["data"]["status"] == "settled"
    # Neither the top-up nor the transfer nor the refund's own job.settled went to this endpoint.
    assert len(deliveries(s, refunds)) == 1
    assert_money_invariants(s.db)


def test_410_disables_the_endpoint_and_nothing_more_is_sent_to_it(hooks: Any) -> None:
    s = hooks
    s.receiver.script("/gone", gone=True)
    gone, _ = register(s, "/gone")
    witness, _ = register(s, "/witness")
    fan, first = fund(s, 50)

    [dropped] = settled_deliveries(s, gone, 1, status="failed")
    assert dropped["attempts"] == 1 and dropped["log"][0]["statusCode"] == 410
    endpoint = s.http.request("GET", f"/api/admin/webhooks/{gone}", token=s.admin).json
    assert endpoint["status"] == "disabled" and "410" in endpoint["disabledReason"]

    friend = seed_users(s.db, 1)[0]
    second = transfer(s, fan, friend, 5)
    settled_deliveries(s, witness, 2)  # the later job was dispatched and delivered elsewhere...
    assert {d["jobId"] for d in deliveries(s, witness)} == {first, second}
    assert len(s.receiver.received("/gone")) == 1  # ...and never to the disabled endpoint
    assert [d["jobId"] for d in deliveries(s, gone)] == [first]
    assert_money_invariants(s.db)


def test_a_worker_sigkilled_mid_delivery_still_delivers(hooks: Any) -> None:
    s = hooks
    # Holds the first request open just under the 2 s timeout: the kill lands mid-request.
    s.receiver.script("/slow", sleep=1.9, sleepCount=1)
    slow, secret = register(s, "/slow", ["job.settled"])
    _, topup = fund(s, 50)

    wait_for(lambda: s.receiver.received("/slow"), 30, what="the first attempt to reach the receiver")
    s.webhooks.kill()  # the whole worker, mid-request: its message stays unacknowledged in Redis
    s.new_webhooks_worker()

    # Its lease (2 x timeout + 5 s = 9 s) runs out; beat's tick hands the delivery to the new worker.
    [done] = settled_deliveries(s, slow, 1, timeout=45)
    assert done["jobId"] == topup and done["log"][0]["statusCode"] == 204
    assert done["attempts"] == 1, "the killed attempt logged nothing; the lease's successor delivered"
    got = verified(s, "/slow", [secret])
    assert len(got) >= 2 and {r["headers"]["webhook-id"] for r, _ in got} == {f"evt_{topup}"}
    assert got[-1][0]["status"] == 204
    assert_money_invariants(s.db)


def test_replay_redelivers_the_same_event_and_rotation_signs_with_both_secrets(hooks: Any) -> None:
    s = hooks
    webhook, old_secret = register(s, "/replay", ["job.settled"])
    _, topup = fund(s, 50)
    [first] = settled_deliveries(s, webhook, 1)

    r = s.http.request("POST", f"/api/admin/webhooks/{webhook}/rotate", token=s.admin)
    assert r.status == 200 and r.json["activeSecrets"] == 2, r
    new_secret = r.json["secret"]
    assert new_secret != old_secret

    r = s.http.request("POST", f"/api/admin/webhooks/{webhook}/deliveries/{first['deliveryId']}/replay",
                       token=s.admin)
    assert r.status == 202 and r.json["run"] == 2, r
    wait_for(lambda: len(s.receiver.received("/replay")) >= 2, 30, what="the replayed request")
    [done] = settled_deliveries(s, webhook, 1)
    wait_for(lambda: deliveries(s, webhook)[0]["run"] == 2 and deliveries(s, webhook)[0]["status"] == "delivered",
             30, what="the replay's run to be logged")
    done = deliveries(s, webhook)[0]
    assert [(e["run"], e["statusCode"]) for e in done["log"]] == [(2, 204), (1, 204)]

    original, replayed = s.receiver.received("/replay")
    assert replayed["headers"]["webhook-id"] == original["headers"]["webhook-id"] == f"evt_{topup}"
    assert replayed["body"] == original["body"]
    assert len(original["headers"]["webhook-signature"].split()) == 1
    assert len(replayed["headers"]["webhook-signature"].split()) == 2  # old and new secret during the grace
    for secret in (old_secret, new_secret):
        verify_webhook(secret, replayed["headers"], replayed["body"], now=replayed["receivedAt"])

    actions = [e["action"] for e in s.db.auditlogs.find({"partition": -1, "action": {"$regex": "^webhook[.]"}})
               .sort("seq", 1) if e["target"]["id"] in (webhook, first["deliveryId"])]
    assert actions == ["webhook.register", "webhook.rotate", "webhook.replay"]

    missing = s.http.request("POST", f"/api/admin/webhooks/{webhook}/deliveries/{'0' * 24}/replay", token=s.admin)
    assert missing.status == 404 and missing.json["code"] == "DELIVERY_NOT_FOUND"
    assert_money_invariants(s.db)


def test_admin_api_contract(hooks: Any) -> None:
    s = hooks
    user = seed_users(s.db, 1)[0]
    body = {"url": s.receiver.url("/contract"), "eventTypes": ["job.settled"]}
    assert s.http.request("POST", "/api/admin/webhooks", token=user, json_body=body).status == 403
    bad = s.http.request("POST", "/api/admin/webhooks", token=s.admin,
                         json_body={**body, "eventTypes": ["job.settled", "job.exploded"]})
    assert bad.status == 422 and bad.json["code"] == "UNKNOWN_EVENT_TYPE", bad
    for wrong in ({**body, "eventTypes": []}, {**body, "url": 5}, {**body, "extra": 1}):
        r = s.http.request("POST", "/api/admin/webhooks", token=s.admin, json_body=wrong)
        assert r.status == 422 and r.json["code"] == "VALIDATION_FAILED", r
    r = s.http.request("POST", "/api/admin/webhooks", token=s.admin, json_body={**body, "url": "ftp://x/y"})
    assert r.status == 422 and r.json["code"] == "WEBHOOK_URL_INVALID", r

    ids = [register(s, f"/contract-{i}", ["job.settled"])[0] for i in range(2)]
    page = s.http.request("GET", "/api/admin/webhooks?limit=1", token=s.admin).json
    assert [e["webhookId"] for e in page["items"]] == [ids[1]] and page["nextCursor"]
    page2 = s.http.request("GET", f"/api/admin/webhooks?limit=1&cursor={page['nextCursor']}", token=s.admin).json
    assert [e["webhookId"] for e in page2["items"]] == [ids[0]]
    assert "secret" not in page["items"][0] and "secrets" not in page["items"][0]

    for path in (f"/api/admin/webhooks/{'0' * 24}", "/api/admin/webhooks/nope"):
        r = s.http.request("GET", path, token=s.admin)
        assert r.status == 404 and r.json["code"] == "WEBHOOK_NOT_FOUND", r
    gone = s.http.request("DELETE", f"/api/admin/webhooks/{ids[0]}", token=s.admin)
    assert gone.status == 200 and gone.json["status"] == "disabled", gone
    r = s.http.request("POST", f"/api/admin/webhooks/{ids[0]}/deliveries/{'1' * 24}/replay", token=s.admin)
    assert r.status == 409 and r.json["code"] == "WEBHOOK_DISABLED", r


PRIVATE_TARGETS = ["https://127.0.0.1/hook", "https://localhost/hook", "https://10.0.0.1/hook",
                   "https://169.254.169.254/latest/meta-data", "https://[::1]/hook", "https://[::ffff:127.0.0.1]/x",
                   "https://192.168.1.10:8443/hook", "https://0.0.0.0/hook"]


def test_private_targets_are_refused_in_production_mode(stack: Any, tmp_path: Path) -> None:
    """A production web process (APP_ENV unset, WEBHOOK_ALLOW_PRIVATE unset), as an operator runs it."""
    env = child_env(stack.env, PURSER_VAR_DIR=str(tmp_path / "var"),
                    PAYOUT_PROVIDER_URL="https://payouts.provider.example/v1")
    for name in ("APP_ENV", "WEBHOOK_ALLOW_PRIVATE", "PURSER_DUPLICATE_DOORBELLS", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    web = Web(env, tmp_path / "gunicorn-production.log", concurrency=1)
    web.start(timeout=60)
    try:
        http = ApiClient(web.base_url, timeout=30)
        for url in PRIVATE_TARGETS:
            r = http.request("POST", "/api/admin/webhooks", token=stack.admin,
                             json_body={"url": url, "eventTypes": ["job.settled"]})
            assert r.status == 422 and r.json["code"] == "WEBHOOK_URL_PRIVATE", (url, r)
        r = http.request("POST", "/api/admin/webhooks", token=stack.admin,
                         json_body={"url": stack.receiver.url("/prod"), "eventTypes": ["job.settled"]})
        assert r.status == 422 and r.json["code"] == "WEBHOOK_URL_INVALID", r  # plain http refused too
        # A public address is accepted (an IP literal: no DNS needed), then removed.
        r = http.request("POST", "/api/admin/webhooks", token=stack.admin,
                         json_body={"url": "https://93.184.215.14/hook", "eventTypes": ["job.settled"]})
        assert r.status == 201, r
        assert http.request("DELETE", f"/api/admin/webhooks/{r.json['webhookId']}", token=stack.admin).status == 200
        assert requests.get(f"{web.base_url}/api/test/error", timeout=10).status_code == 404  # production indeed
        http.close()
    finally:
        web.stop()
