"""Payouts end to end: the real app, a live worker pair, gunicorn for the provider's
webhooks and the provider simulator as a real HTTP process (devstack/provider_sim.py).

The housekeeping worker submits holds to the simulator (``PAYOUT_PROVIDER_URL``,
tests/api/conftest.py); the simulator pays (or fails: amounts ending in 13) after
``PROVIDER_SIM_DELAY_SECONDS`` and calls ``POST /api/payments/events`` on gunicorn.
The payout tick (services/payouts.tick) is called from the test with an explicit
clock, as beat would call it later.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from api.routes.payments import sign
from devstack.provider_sim import ProviderSimProcess
from ledger.timeutil import utcnow
from services import payouts
from services.payout_provider import HttpPayoutProvider
from tasks.settle import ring
from tests.api.helpers import Api, User, assert_problem
from tests.support.env import TEST_WEBHOOK_SECRET, child_env
from tests.support.invariants import assert_money_invariants

FUNDS = 5000


@dataclass
class Sim:
    process: ProviderSimProcess

    @property
    def url(self) -> str:
        return self.process.url

    def control(self, **values: Any) -> None:
        r = requests.post(f"{self.url}/_sim/control", json=values, timeout=5)
        assert r.status_code == 200, r.text

    def record(self, payout_id: str) -> dict[str, Any] | None:
        r = requests.get(f"{self.url}/payouts/{payout_id}", timeout=5)
        return r.json() if r.status_code == 200 else None


@pytest.fixture
def sim(api: Api, web_server: Callable[..., Any], stack_env: dict[str, str], provider_sim_port: int,
        tmp_path: Path) -> Iterator[Sim]:
    web = web_server(concurrency=1)  # the simulator's webhooks need a real server
    process = ProviderSimProcess(child_env(stack_env), tmp_path / "provider-sim.log", web.base_url,
                                 port=provider_sim_port)
    process.start()
    try:
        yield Sim(process)
    finally:
        process.stop()


def creator(api: Api) -> User:
    user = api.user("creator")
    r = api.client.webhook(user.id, FUNDS)
    api.expect_settled(user, r)
    return user


def request_payout(api: Api, user: User, amount: int) -> str:
    job = api.expect_settled(user, api.money("/api/payouts", user, {"amount": amount}))
    assert job["type"] == "payout" and job["result"]["payoutId"] == job["jobId"], job
    return job["jobId"]


def payout(api: Api, user: User, payout_id: str) -> dict[str, Any]:
    r = api.get(f"/api/payouts/{payout_id}", user)
    assert r.status == 200, r
    return r.json


def wait_payout(api: Api, user: User, payout_id: str, status: str, timeout: float = 45.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = payout(api, user, payout_id)
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, f"payout still {body['status']}, expected {status}: {body}"
        time.sleep(0.2)


def wait_attempted(api: Api, payout_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = api.db.payouts.find_one({"_id": payout_id})
        if doc is not None and doc.get("submitAttempts", 0) >= 1:
            return doc
        assert time.monotonic() < deadline, f"payout {payout_id} never submitted: {doc}"
        time.sleep(0.1)


def funds(api: Api, user: User) -> tuple[int, int]:
    api.client.balance(user.token)  # once incoming credits are applied
    body = api.get("/api/wallet/balance", user).json
    return body["balance"], body["held"]


def event(api: Api, event_id: str, kind: str, data: dict[str, Any]) -> Any:
    raw = json.dumps({"id": event_id, "type": kind, "data": data}).encode()
    return api.client.request("POST", "/api/payments/events", data=raw, content_type="application/json",
                              headers={"X-Purser-Signature": sign(TEST_WEBHOOK_SECRET, int(time.time()), raw)})


def run_tick(api: Api, sim_url: str, *, later: timedelta = timedelta(minutes=5)) -> payouts.TickResult:
    return payouts.tick(api.db, HttpPayoutProvider(sim_url), partitions=4, ring=ring,
                        resolve_after=timedelta(minutes=2),
                        hold_ttl=timedelta(hours=24), now=utcnow() + later)


# --- admission -----------------------------------------------------------------------------


def test_payout_admission_roles_minimum_and_visibility(api: Api) -> None:
    fan = api.user()
    assert_problem(api.money("/api/payouts", fan, {"amount": 2000}), 403, "PAYOUT_NOT_ALLOWED")
    maker = api.user("creator")
    assert_problem(api.money("/api/payouts", maker, {"amount": 999}), 422, "PAYOUT_BELOW_MINIMUM")
    assert_problem(api.money("/api/payouts", maker, {"amount": 1.5}), 422, "VALIDATION_FAILED")
    assert_problem(api.get(f"/api/payouts/{uuid.uuid4().hex[:24]}", maker), 404, "PAYOUT_NOT_FOUND")
    r = event(api, "evt-unknown", "payout.paid", {"payoutId": "0123456789abcdef01234567"})
    assert_problem(r, 404, "PAYOUT_NOT_FOUND")
    # Not enough money: the hold is refused by the ledger, nothing is held.
    job = api.settle(maker, api.money("/api/payouts", maker, {"amount": 2000}))
    assert job["status"] == "failed" and job["error"]["code"] == "INSUFFICIENT_FUNDS", job
    assert funds(api, maker) == (0, 0)
    assert_money_invariants(api.db)


# --- end to end through the simulator ------------------------------------------------------


def test_payout_paid_end_to_end(api: Api, sim: Sim) -> None:
    user = creator(api)
    payout_id = request_payout(api, user, 2000)
    body = wait_payout(api, user, payout_id, "paid")
    assert [e["status"] for e in body["events"]] == ["paid"]
    assert body["events"][0]["eventId"] == f"evt_{payout_id}_paid"
    assert funds(api, user) == (FUNDS - 2000, 0)
    assert sim.record(payout_id)["status"] == "paid"  # type: ignore[index]
    listed = api.get("/api/payouts?limit=1", user).json
    assert [p["payoutId"] for p in listed["items"]] == [payout_id] and listed["nextCursor"] is None
    other = api.user("creator")
    assert_problem(api.get(f"/api/payouts/{payout_id}", other), 404, "PAYOUT_NOT_FOUND")
    assert_money_invariants(api.db)


def test_payout_failed_releases_the_hold(api: Api, sim: Sim) -> None:
    user = creator(api)
    payout_id = request_payout(api, user, 1013)  # the simulator fails amounts ending in 13
    body = wait_payout(api, user, payout_id, "failed")
    assert [e["status"] for e in body["events"]] == ["failed"]
    assert funds(api, user) == (FUNDS, 0)
    assert_money_invariants(api.db)


def test_provider_down_at_submission_then_recovered(api: Api, sim: Sim) -> None:
    user = creator(api)
    sim.process.stop()
    payout_id = request_payout(api, user, 2000)
    doc = wait_attempted(api, payout_id)
    assert doc["status"] == "pending"
    # Nothing can be concluded while the provider is down: nothing voided, the coins stay held.
    assert run_tick(api, sim.url).provider_down
    assert payout(api, user, payout_id)["status"] == "pending"
    assert funds(api, user) == (FUNDS - 2000, 2000)
    assert api.db.jobs.count_documents({"type": "payout_event"}) == 0
    sim.process.start()  # the worker's retry (backoff) submits it; the provider pays it
    body = wait_payout(api, user, payout_id, "paid", timeout=60)
    assert [e["status"] for e in body["events"]] == ["paid"]
    assert funds(api, user) == (FUNDS - 2000, 0)
    assert_money_invariants(api.db)


def test_lost_submission_answer_is_resolved_by_status_lookup(api: Api, sim: Sim) -> None:
    user = creator(api)
    sim.control(dropAnswers=1, webhooks=False)  # the provider gets it, its answer never arrives
    payout_id = request_payout(api, user, 2000)
    wait_attempted(api, payout_id)
    # Resubmitting is safe (the payout id is the provider's idempotency key): one payout there.
    deadline = time.monotonic() + 30
    while payout(api, user, payout_id)["status"] != "submitted":
        assert time.monotonic() < deadline, payout(api, user, payout_id)
        time.sleep(0.2)
    assert funds(api, user) == (FUNDS - 2000, 2000)
    while sim.record(payout_id)["status"] != "paid":  # type: ignore[index]
        time.sleep(0.2)
    first, second = run_tick(api, sim.url), run_tick(api, sim.url)  # a doubled beat tick
    assert (first.resolved, second.resolved) == (1, 0), (first, second)
    body = wait_payout(api, user, payout_id, "paid")
    assert [e["eventId"] for e in body["events"]] == [f"status:{payout_id}:paid"]
    assert api.db.jobs.count_documents({"type": "payout_event"}) == 1
    assert funds(api, user) == (FUNDS - 2000, 0)
    assert_money_invariants(api.db)


def test_duplicate_and_reordered_events_leave_the_ledger_correct(api: Api, sim: Sim) -> None:
    user = creator(api)
    payout_id = request_payout(api, user, 2000)
    wait_payout(api, user, payout_id, "paid")
    # The provider's event again (same id): the first answer, nothing new.
    again = event(api, f"evt_{payout_id}_paid", "payout.paid", {"payoutId": payout_id})
    assert again.status == 202 and again.headers.get("Idempotent-Replayed") == "true", again
    # Paid twice under another id: recorded as a conflict, no coins move.
    twice = api.settle(user, event(api, "evt-paid-twice", "payout.paid", {"payoutId": payout_id}))
    assert twice["status"] == "failed" and twice["error"]["code"] == "PAYOUT_STATE_CONFLICT", twice
    assert funds(api, user) == (FUNDS - 2000, 0)
    # Failed after paid: the bank sent it back, a compensating credit (never an edit).
    back = api.expect_settled(user, event(api, "evt-failed-late", "payout.failed", {"payoutId": payout_id}))
    assert back["result"]["status"] == "returned", back
    assert funds(api, user) == (FUNDS, 0)
    # ...and once returned, nothing else applies.
    late = api.settle(user, event(api, "evt-returned-late", "payout.returned", {"payoutId": payout_id}))
    assert late["error"]["code"] == "PAYOUT_STATE_CONFLICT", late
    body = payout(api, user, payout_id)
    assert body["status"] == "returned"
    assert [e["status"] for e in body["events"]] == ["paid", "returned"]
    failed = api.db.jobs.count_documents({"type": "payout_event", "status": "failed",
                                          "error.code": "PAYOUT_STATE_CONFLICT"})
    assert failed == 2
    assert funds(api, user) == (FUNDS, 0)
    assert_money_invariants(api.db)


def test_unsubmitted_hold_expires_and_a_late_paid_event_is_refused(api: Api, sim: Sim) -> None:
    user = creator(api)
    sim.control(unavailable=True)  # submissions answer 503; the provider never gets the payout
    payout_id = request_payout(api, user, 2000)
    wait_attempted(api, payout_id)
    assert run_tick(api, sim.url, later=timedelta(hours=1)).expired == 0  # within the TTL: resubmitted
    first = run_tick(api, sim.url, later=timedelta(hours=25))
    second = run_tick(api, sim.url, later=timedelta(hours=25))
    assert (first.expired, second.expired) == (1, 0), (first, second)
    body = wait_payout(api, user, payout_id, "expired")
    assert [e["eventId"] for e in body["events"]] == [f"expire:{payout_id}"]
    assert funds(api, user) == (FUNDS, 0)
    # A paid event after expiry is refused and recorded; the expired hold stays voided.
    late = api.settle(user, event(api, "evt-paid-after-expiry", "payout.paid", {"payoutId": payout_id}))
    assert late["status"] == "failed" and late["error"]["code"] == "PAYOUT_STATE_CONFLICT", late
    assert funds(api, user) == (FUNDS, 0)
    assert sim.record(payout_id) is None
    assert_money_invariants(api.db)
