"""Locust profile of Purser: six scenarios, seeded users of every tier, five load phases.

Scenarios and weights: health 10, auth (login) 15, wallet (balance, history,
transfer) 20, unlock 25, subscription 15, gifts 15. Every money request carries a
fresh ``Idempotency-Key``; its job is then followed to a terminal state with
``GET /api/jobs/<id>`` and ``Prefer: wait=10``, and the end-to-end time (POST sent to
terminal state seen) is recorded as a request of type ``settle`` named after the
operation, beside the HTTP rows. Intended business refusals (``INSUFFICIENT_FUNDS``,
``ALREADY_UNLOCKED``, ``ALREADY_SUBSCRIBED``) are successes named ``<op> [CODE]``;
any other failure is an error.

Environment:
- ``LOADTEST_MANIFEST``: the seed manifest (``python -m loadtest.seed``), default
  ``var/loadtest-manifest.json``;
- ``LOAD_SCALE`` (default 1): multiplies the user counts of every phase;
- ``LOAD_PROFILE=short``: the same five phases in about a minute and a half;
- ``LOAD_PROFILE=rate``: driven by arrival rate instead of user count (warm-up, 100
  requests/s for 5 minutes, 200 requests/s for 1 minute; ``loadtest/rate_feed.py``
  for its own variables), with a per-phase summary in ``LOAD_PHASE_STATS``.

Headless, with reports (``python -m loadtest.run_locust`` does all of it on an
isolated stack)::

    locust -f loadtest/locustfile.py --headless --host http://127.0.0.1:5000 \\
        --csv loadtest/results/locust --html loadtest/results/locust.html
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from locust import LoadTestShape, between, events, task
from locust.contrib.fasthttp import FastHttpUser

MANIFEST = Path(os.environ.get("LOADTEST_MANIFEST")
                or Path(__file__).resolve().parent.parent / "var" / "loadtest-manifest.json")
BUSINESS_FAILURES = {"INSUFFICIENT_FUNDS", "ALREADY_UNLOCKED", "ALREADY_SUBSCRIBED"}
SETTLE_TIMEOUT = 60.0
PROFILE = os.environ.get("LOAD_PROFILE", "").lower()

if PROFILE == "rate":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # locust puts only loadtest/ on the path
    from loadtest.rate_feed import install

    FEED = install()
else:
    FEED = None

_population: dict[str, Any] | None = None


def population() -> dict[str, Any]:
    """The seed manifest, read once per process."""
    global _population
    if _population is None:
        data = json.loads(MANIFEST.read_text())
        users = data["users"]
        data["payers"] = [u for u in users if u["role"] in ("free", "premium", "creator")]
        data["creators"] = [u for u in users if u["role"] == "creator" and u["id"] in data["plans"]]
        _population = data
    return _population


class PurserUser(FastHttpUser):
    """A fan or creator of a random tier, logged in with the seeded password."""

    _think = between(0.5, 2.0)

    def wait_time(self) -> float:
        # The rate profile: wait for the next arrival of the open feed instead of thinking.
        return FEED.take() if FEED is not None else self._think()

    def on_start(self) -> None:
        pop = population()
        self.me = random.choice(pop["payers"])
        self.token: str | None = None
        self.login()
        if FEED is not None:
            FEED.take()  # locust runs the first task right after on_start: it waits for an arrival too

    # -- helpers ---------------------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        if self.token is None and FEED is not None:
            # A client whose sign-in failed signs in again before its next request; its failed
            # login is the error, not a run of 401s (the user-count profiles keep the seed's behaviour).
            self.login()
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def login(self) -> None:
        body = {"email": self.me["email"], "password": population()["password"]}
        with self.client.post("/api/auth/login", json=body, name="/api/auth/login",
                              catch_response=True) as response:
            if response.status_code == 200:
                self.token = response.json()["accessToken"]
                response.success()
            else:
                response.failure(f"login {response.status_code}")

    def money(self, kind: str, path: str, body: dict[str, Any]) -> None:
        """POST a money request with a fresh key, then follow its job to the end as a ``settle`` row."""
        started = time.perf_counter()
        headers = {**self._auth(), "Idempotency-Key": uuid.uuid4().hex}
        with self.client.post(path, json=body, headers=headers, name=path, catch_response=True) as response:
            if response.status_code != 202:
                response.failure(f"{response.status_code}: {(response.text or '')[:200]}")
                return
            response.success()
            job_id = response.json()["jobId"]
        self.follow(kind, job_id, started)

    def follow(self, kind: str, job_id: str, started: float) -> None:
        job: dict[str, Any] | None = None
        error: Exception | None = None
        deadline = started + SETTLE_TIMEOUT
        while time.perf_counter() < deadline:
            with self.client.get(f"/api/jobs/{job_id}", headers={**self._auth(), "Prefer": "wait=10"},
                                 name="/api/jobs/[id] (Prefer: wait=10)", catch_response=True) as response:
                if response.status_code != 200:
                    response.failure(f"{response.status_code}")
                    error = RuntimeError(f"job poll answered {response.status_code}")
                    break
                response.success()
                job = response.json()
            if job["status"] in ("settled", "failed"):
                break
        else:
            error = TimeoutError(f"job {job_id} not terminal after {SETTLE_TIMEOUT:.0f} s")
        elapsed_ms = (time.perf_counter() - started) * 1000
        name = kind
        if error is None and job is not None and job["status"] == "failed":
            code = (job.get("error") or {}).get("code", "?")
            name = f"{kind} [{code}]"
            if code not in BUSINESS_FAILURES:
                error = RuntimeError(f"job failed with {code}")
        events.request.fire(request_type="settle", name=name, response_time=elapsed_ms, response_length=0,
                            exception=error, context={"jobId": job_id})

    def other_user(self) -> dict[str, Any]:
        pop = population()
        while True:
            other = random.choice(pop["payers"])
            if other["id"] != self.me["id"]:
                return other

    def other_creator(self) -> dict[str, Any]:
        pop = population()
        while True:
            creator = random.choice(pop["creators"])
            if creator["id"] != self.me["id"]:
                return creator

    # -- the six scenarios -----------------------------------------------------------
    @task(10)
    def health(self) -> None:
        self.client.get("/api/health", name="/api/health")

    @task(15)
    def auth(self) -> None:
        self.login()

    @task(20)
    def wallet(self) -> None:
        choice = random.random()
        if choice < 0.4:
            self.client.get("/api/wallet/balance", headers=self._auth(), name="/api/wallet/balance")
        elif choice < 0.7:
            self.client.get("/api/wallet/transactions?limit=20", headers=self._auth(),
                            name="/api/wallet/transactions")
        else:
            other = self.other_user()
            self.money("transfer", "/api/wallet/transfer", {"receiverId": other["id"], "amount": random.randint(1, 20)})

    @task(25)
    def unlock(self) -> None:
        pop = population()
        content = random.choice(pop["contents"])
        while content["creator_id"] == self.me["id"]:
            content = random.choice(pop["contents"])
        self.money("unlock", "/api/premium/unlock", {"contentId": content["id"]})

    @task(15)
    def subscription(self) -> None:
        creator = self.other_creator()
        self.money("subscribe", "/api/subscription/subscribe",
                   {"creatorId": creator["id"], "autoRenew": random.random() < 0.7})

    @task(15)
    def gifts(self) -> None:
        creator = self.other_creator()
        self.money("gift", "/api/gifts", {"creatorId": creator["id"], "amount": random.randint(1, 50)})


# (name, seconds, users at the end of the phase); a phase ramps linearly from the previous count.
PHASES_FULL = [("warm-up", 60, 5), ("ramp-up", 120, 25), ("sustained", 300, 25), ("spike", 60, 75),
               ("cool-down", 60, 5)]
PHASES_SHORT = [("warm-up", 10, 3), ("ramp-up", 20, 10), ("sustained", 30, 10), ("spike", 15, 30),
                ("cool-down", 10, 3)]


def phases() -> list[tuple[str, float, int]]:
    scale = float(os.environ.get("LOAD_SCALE") or 1)
    base = PHASES_SHORT if os.environ.get("LOAD_PROFILE", "").lower() == "short" else PHASES_FULL
    return [(name, seconds, max(1, math.ceil(users * scale))) for name, seconds, users in base]


class Phases(LoadTestShape):
    """By user count: warm-up, ramp-up, sustained, spike, cool-down; users x ``LOAD_SCALE``;
    ``LOAD_PROFILE=short``. ``LOAD_PROFILE=rate``: the arrival feed's pool and phases."""

    def __init__(self) -> None:
        super().__init__()
        self.plan = phases()

    def tick(self) -> tuple[int, float] | None:
        if FEED is not None:
            return FEED.tick()
        elapsed = self.get_run_time()
        previous = 0
        for _name, seconds, users in self.plan:
            if elapsed < seconds:
                if users > previous and _name == "ramp-up":
                    target = previous + (users - previous) * elapsed / seconds
                    return max(1, round(target)), max(1.0, (users - previous) / max(seconds, 1) * 2)
                # Warm-up, sustained and cool-down hold their count; the spike arrives at once.
                return users, max(1.0, abs(users - previous))
            elapsed -= seconds
            previous = users
        return None
