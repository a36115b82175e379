"""The contract between webhook events and the job route (issue 27, item 3).

A webhook event's ``data`` is documented as "the job as ``GET /api/jobs/<id>`` shows
it". Here every job type is made over HTTP on the suite's real stack (gunicorn, the
ledger, housekeeping and webhooks workers, beat and a receiver process), every event
is verified with ``purser_client``'s own verifier, and its ``data`` is compared, whole,
with what the route answers for the same job at that moment: refunds included
(``refunds``, ``refunded`` on every settled job money can come back from, and the
refund and chargeback jobs themselves).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from purser_client import verify_webhook

from api.routes.payments import sign
from ledger.operations import OPERATION_TYPES
from services import subscriptions
from services.webhook_events import EVENT_TYPES
from tests.support.env import TEST_WEBHOOK_SECRET
from tests.support.invariants import assert_money_invariants
from tests.support.seeding import User, partitions, seed_users
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

PATH = "/contract"


def _ok(r: Any, status: int = 202) -> Any:
    assert r.status == status, r
    return r.json


def _settled(s: Any, r: Any, status: str = "settled") -> str:
    job_id = _ok(r)["jobId"]
    assert s.http.wait_job(s.admin, job_id)["status"] == status, job_id
    return job_id


def _provider_event(s: Any, kind: str, data: dict[str, Any]) -> Any:
    raw = json.dumps({"id": f"ev-{uuid.uuid4().hex}", "type": kind, "data": data}).encode()
    return s.http.request("POST", "/api/payments/events", data=raw, content_type="application/json",
                          headers={"X-Purser-Signature": sign(TEST_WEBHOOK_SECRET, int(time.time()), raw)})


def _events(s: Any, secret: str, count: int) -> dict[str, dict[str, Any]]:
    """The verified events received on PATH by event id, once ``count`` arrived."""
    def probe() -> dict[str, dict[str, Any]] | None:
        got = {}
        for record in s.receiver.received(PATH):
            payload = verify_webhook(secret, record["headers"], record["body"], now=record["receivedAt"])
            got[payload["id"]] = payload
        return got if len(got) >= count else None
    return wait_for(probe, 60, poll=0.3, what=f"{count} events on {PATH}")  # type: ignore[return-value]


def _route(s: Any, job_id: str) -> dict[str, Any]:
    return _ok(s.http.request("GET", f"/api/jobs/{job_id}", token=s.admin), 200)


def _assert_same(s: Any, events: dict[str, dict[str, Any]], job_ids: set[str]) -> None:
    for payload in events.values():
        job_id = payload["data"]["jobId"]
        if job_id in job_ids:
            assert payload["data"] == _route(s, job_id), (payload["type"], payload["data"]["type"])


def _renewal(s: Any, subscription_id: str) -> str:
    """Beat's subscription tick, run as if the period had ended: the renewal job's id."""
    sub = s.db.subscriptions.find_one({"_id": subscription_id})
    ticked = subscriptions.tick(s.db, now=sub["expiresAt"] + timedelta(seconds=1), partitions=partitions(),
                                ring=lambda partition, request_id: None)  # beat's sweeper rings it
    assert ticked.renewals_submitted == 1, ticked
    job = s.db.jobs.find_one({"type": "renew", "ownerId": sub["subscriberId"]})
    assert s.http.wait_job(s.admin, job["_id"])["status"] == "settled"
    return job["_id"]


def _every_original(s: Any, fan: User, creator: User, topup: str) -> dict[str, str]:
    """One job of every type money can be refunded or charged back from, and the rest: type -> job id."""
    friend = seed_users(s.db, 1)[0]
    jobs = {"topup": topup}
    jobs["transfer"] = _settled(s, s.http.money("/api/wallet/transfer", fan, {"receiverId": friend.id, "amount": 40}))
    jobs["transfer (failed)"] = _settled(
        s, s.http.money("/api/wallet/transfer", fan, {"receiverId": friend.id, "amount": 10**8}), "failed")
    content = _ok(s.http.request("POST", "/api/premium/content", token=creator,
                                 json_body={"title": "contract", "price": 250}), 201)["contentId"]
    jobs["unlock"] = _settled(s, s.http.money("/api/premium/unlock", fan, {"contentId": content}))
    _ok(s.http.request("PUT", "/api/subscription/plan", token=creator, json_body={"price": 300, "periodDays": 30}),
        200)
    subscribed = s.http.money("/api/subscription/subscribe", fan, {"creatorId": creator.id, "autoRenew": True})
    jobs["subscribe"] = _settled(s, subscribed)
    subscription_id = s.http.wait_job(s.admin, jobs["subscribe"])["result"]["subscriptionId"]
    jobs["renew"] = _renewal(s, subscription_id)
    jobs["gift"] = _settled(s, s.http.money("/api/gifts", fan, {"creatorId": creator.id, "amount": 70}))
    jobs["credit"] = _settled(s, s.http.money("/api/admin/credit", s.admin,
                                              {"userId": creator.id, "amount": 5000, "reason": "contract"}))
    payout = _settled(s, s.http.money("/api/payouts", creator, {"amount": 1000}))
    jobs["payout"] = payout
    jobs["payout_event"] = _ok(_provider_event(s, "payout.failed", {"payoutId": payout}))["jobId"]
    s.http.wait_job(s.admin, jobs["payout_event"])  # settled or failed (PAYOUT_STATE_CONFLICT): terminal either way
    return jobs


def test_every_event_carries_the_job_exactly_as_the_route_shows_it(hooks: Any) -> None:
    s = hooks
    webhook = _ok(s.http.request("POST", "/api/admin/webhooks", token=s.admin,
                                 json_body={"url": s.receiver.url(PATH), "eventTypes": list(EVENT_TYPES)}), 201)
    secret = webhook["secret"]
    fan = seed_users(s.db, 1, role="premium")[0]
    creator = seed_users(s.db, 1, role="creator")[0]
    provider_tx = f"ptx-{uuid.uuid4().hex}"
    topup = _settled(s, s.http.webhook(fan.id, 5000, provider_tx))

    originals = _every_original(s, fan, creator, topup)
    # job.settled/failed for each, payout.pending for the payout, payout.<status> for the event if settled
    expected = len(originals) + 1 + (s.http.wait_job(s.admin, originals["payout_event"])["status"] == "settled")
    events = _events(s, secret, expected)
    assert {p["data"]["jobId"] for p in events.values()} == set(originals.values())
    _assert_same(s, events, set(originals.values()))
    reversible = ("topup", "transfer", "unlock", "subscribe", "renew", "gift")
    for kind in reversible:
        data = next(p["data"] for p in events.values() if p["data"]["jobId"] == originals[kind])
        assert data["refunds"] == [] and data["refunded"] == 0, (kind, data)

    # Money back: a partial refund of the unlock and a chargeback of the top-up.
    refund = _settled(s, s.http.money("/api/admin/refunds", s.admin,
                                      {"jobId": originals["unlock"], "amount": 100, "reason": "duplicate"}))
    chargeback = _settled(s, _provider_event(s, "topup.disputed",
                                             {"providerTxId": provider_tx, "userId": fan.id, "amount": 500}))
    events = _events(s, secret, expected + 4)  # job.settled + refund.settled / chargeback.settled
    _assert_same(s, events, {refund, chargeback})
    assert {p["type"] for p in events.values() if p["data"]["jobId"] in (refund, chargeback)} == {
        "job.settled", "refund.settled", "chargeback.settled"}
    # The route now lists them on the originals; an event is the job as it was when it was made.
    unlock_now, topup_now = _route(s, originals["unlock"]), _route(s, topup)
    assert unlock_now["refunded"] == 100 and [r["jobId"] for r in unlock_now["refunds"]] == [refund]
    assert topup_now["refunded"] == 500 and [r["jobId"] for r in topup_now["refunds"]] == [chargeback]

    made = {s.db.jobs.find_one({"_id": job_id})["type"] for job_id in [*originals.values(), refund, chargeback]}
    assert made == set(OPERATION_TYPES), "every job type has its event compared"
    assert_money_invariants(s.db)
