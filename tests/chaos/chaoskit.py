"""Fault-injection machinery: a private stack, a mixed money load that behaves like
real clients (retries with the same Idempotency-Key), and the per-scenario report.

Every chaos test runs on its own SecantusDB and Redis (started once for the chaos
session), never on the session stores the other suites share: restarting Redis
empty or arming a server-wide ``failCommand`` there would break whatever else
runs in the session.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from devstack.stores import ManagedProcess, MongoServer, RedisServer, stop_all
from tests.support.client import ApiClient, Response
from tests.support.invariants import assert_money_invariants
from tests.support.load import Sent, Tally, assert_told_matches_store, doubled, fire, fund
from tests.support.seeding import User, seed_users
from tests.support.stack import Beat, RoleWorker, Web
from tests.support.waiting import wait_drained, wait_for

# Answers after which a real client retries the same request with the same key.
RETRYABLE = {0, 409, 500, 502, 503, 504}


# ------------------------------------------------------------------------------ scale


@dataclass(frozen=True)
class Scale:
    name: str
    users: int  # paying users in the load
    clients: int  # concurrent client threads
    warmup: float  # seconds of load before the strike
    after: float  # seconds of load after recovery
    kills: int  # pool-child SIGKILLs in the worker scenario
    strike_window: float  # seconds a fail point / duplicate scenario stays armed
    dwell: float  # seconds each fail point stays armed before the next replaces it
    blocks: int  # blocked commits (network timeout around a commit)
    outage: float  # seconds a store stays down
    think: float  # pause between one client's requests (keeps the CI backlog short)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


SCALES = {
    "ci": Scale("ci", users=12, clients=4, warmup=2.0, after=2.0, kills=1, strike_window=3.0, dwell=1.0,
                blocks=1, outage=3.0, think=0.05),
    "full": Scale("full", users=48, clients=8, warmup=8.0, after=8.0, kills=6, strike_window=16.0, dwell=1.5,
                  blocks=2, outage=8.0, think=0.02),
}


# ------------------------------------------------------------------------------ processes


class ChaosStack:
    """Web, workers and beats on the private stores; everything stopped by :meth:`close`.

    Processes run the Procfile's lines (tests/support/stack.py): ``workers`` are
    ``worker`` role (ledger queues, pool of 2), ``housekeepers`` the ``housekeeping``
    role that runs beat's sweep, reconcile and subscription tick.
    """

    def __init__(self, mongo: MongoServer, redis: RedisServer, env: Mapping[str, str], logs: Path) -> None:
        self.mongo = mongo
        self.redis = redis
        self.base_env = dict(env)
        self.logs = logs
        self.processes: list[ManagedProcess] = []
        self.workers: list[RoleWorker] = []
        self.housekeepers: list[RoleWorker] = []
        self.beats: list[Beat] = []
        self.web: Web | None = None
        self._n = 0

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**self.base_env, **(extra or {})}

    def _next(self) -> int:
        self._n += 1
        return self._n

    def start_web(self, extra: Mapping[str, str] | None = None) -> Web:
        web = Web(self.env({"WEB_THREADS": "8", **(extra or {})}), self.logs / f"web-{self._next()}.log",
                  concurrency=2)
        self.processes.append(web)
        self.web = web.start(timeout=90)
        return web

    def start_worker(self, extra: Mapping[str, str] | None = None, concurrency: int = 2) -> RoleWorker:
        """A ledger worker (Procfile ``worker``), its pool sized through ``WORKER_CONCURRENCY``."""
        env = self.env({"WORKER_CONCURRENCY": str(concurrency), **(extra or {})})
        worker = RoleWorker("worker", env, self.logs / f"worker-{self._next()}.log")
        self.processes.append(worker)
        self.workers.append(worker)
        return worker.start(timeout=90)

    def start_housekeeping(self, extra: Mapping[str, str] | None = None) -> RoleWorker:
        """The Procfile's ``housekeeping`` worker (``purser.default``)."""
        worker = RoleWorker("housekeeping", self.env(extra), self.logs / f"housekeeping-{self._next()}.log")
        self.processes.append(worker)
        self.housekeepers.append(worker)
        return worker.start(timeout=90)

    def start_beat(self, extra: Mapping[str, str] | None = None) -> Beat:
        n = self._next()
        beat = Beat(self.env(extra), self.logs / f"beat-{n}.log", self.logs / f"beat-{n}.schedule",
                    name=f"beat {n}")
        self.processes.append(beat)
        self.beats.append(beat)
        return beat.start()

    def start(self, *, web: Mapping[str, str] | None = None, worker: Mapping[str, str] | None = None,
              beat: Mapping[str, str] | None = None, workers: int = 1, beats: int = 1) -> ChaosStack:
        """Start web, ``workers`` ledger workers, one housekeeping worker and ``beats`` beats
        in parallel (process start-up is most of the wait)."""
        jobs: list[Callable[[], Any]] = [lambda: self.start_web(web)]
        jobs += [lambda: self.start_worker(worker) for _ in range(workers)]
        jobs += [lambda: self.start_housekeeping(worker)]
        jobs += [lambda: self.start_beat(beat) for _ in range(beats)]
        fire(lambda job: job(), jobs, workers=len(jobs))
        return self

    @property
    def http(self) -> ApiClient:
        assert self.web is not None
        return ApiClient(self.web.base_url, timeout=60)

    def log_text(self, proc: ManagedProcess) -> str:
        return proc.log_tail(lines=100_000, since_start=False)

    def diagnose(self) -> str:
        """What each process was doing, for a scenario that did not drain: the warnings
        and errors at the end of its log, and a py-spy dump of it and its pool children.
        CI keeps only the test output, so this is the only evidence a flaky run leaves."""
        parts = []
        for proc in self.processes:
            noisy = [line for line in self.log_text(proc).splitlines()
                     if '"level": "INFO"' not in line and '"level": "DEBUG"' not in line]
            parts.append(f"--- {proc.name}: last warnings and errors\n"
                         + "\n".join(line[:400] for line in noisy[-25:]))
            parts.append(_py_spy(proc.pid))
        return "\n".join(parts)

    def close(self) -> None:
        # Independent processes: stop them side by side (each may take seconds).
        fire(lambda proc: stop_all([proc]), self.processes, workers=max(1, len(self.processes)))


def _py_spy(pid: int | None) -> str:
    if pid is None or not psutil.pid_exists(pid):
        return "(not running)"
    pids = [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    spy = Path(sys.executable).with_name("py-spy")
    out = []
    for one in pids:
        try:
            done = subprocess.run([str(spy), "dump", "--pid", str(one)], capture_output=True, text=True,
                                  timeout=20, check=False)
            out.append(done.stdout[-4000:] or done.stderr[-400:])
        except (OSError, subprocess.SubprocessError) as exc:
            out.append(f"py-spy on {one}: {exc}")
    return "\n".join(out)


def sweeper_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Beat settings that make the sweeper the fast liveness backstop it is meant to be."""
    return {"SWEEP_INTERVAL_SECONDS": "1", "SWEEP_AGE_SECONDS": "1", **(extra or {})}


# ------------------------------------------------------------------------------ load


@dataclass
class World:
    """The users and things the load acts on."""

    fans: list[User]
    creators: list[User]
    contents: list[str]
    users: dict[str, User] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.users = {u.id: u for u in self.fans + self.creators}


def build_world(db: Any, http: ApiClient, tally: Tally, scale: Scale, funds: int = 5000) -> World:
    fans = seed_users(db, scale.users, "free", "chaos")
    creators = seed_users(db, 2, "creator", "star")
    contents = []
    for creator in creators:
        r = http.request("PUT", "/api/subscription/plan", json_body={"price": 90, "periodDays": 30},
                         token=creator.token)
        assert r.status == 200, r
        for price in (40, 75):
            r = http.request("POST", "/api/premium/content", json_body={"title": "chaos", "price": price},
                             token=creator.token)
            assert r.status == 201, r
            contents.append(r.json["contentId"])
    fund(http, tally, fans, funds)
    return World(fans, creators, contents)


@dataclass
class Attempted:
    kind: str
    payer: str
    key: str
    send: Callable[[], Response]
    receiver: str | None = None
    replies: list[Response] = field(default_factory=list)

    @property
    def final(self) -> Response | None:
        return self.replies[-1] if self.replies else None

    @property
    def definite(self) -> bool:
        return self.final is not None and self.final.status not in RETRYABLE


class Load:
    """Client threads sending mixed money requests until stopped.

    A request answered with a transport error, a 5xx or a 409 is retried
    with the same key and body, as the HTTP contract tells clients to; one still
    without a definite answer when the load stops is finished by :meth:`resolve`.
    """

    WEIGHTS = (("transfer", 35), ("gift", 25), ("unlock", 15), ("subscribe", 10), ("topup", 15))

    def __init__(self, http: ApiClient, tally: Tally, world: World, clients: int, seed: int = 8,
                 think: float = 0.0) -> None:
        self.http = http
        self.think = think
        self.tally = tally
        self.world = world
        self.clients = clients
        self.rng = random.Random(seed)
        self.rng_lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.attempted: list[Attempted] = []
        self.answers: Counter = Counter()  # every answer seen, retries included
        self.transport_errors: list[str] = []  # a sample of what status-0 answers were
        self.lock = threading.Lock()

    # -- one logical request ----------------------------------------------------------
    def _make(self) -> Attempted:
        with self.rng_lock:
            kinds, weights = zip(*self.WEIGHTS, strict=True)
            kind = self.rng.choices(kinds, weights)[0]
            fan = self.rng.choice(self.world.fans)
            other = self.rng.choice([f for f in self.world.fans if f is not fan])
            creator = self.rng.choice(self.world.creators)
            content = self.rng.choice(self.world.contents)
            amount = self.rng.randint(1, 30)
        key = uuid.uuid4().hex
        http = self.http
        if kind == "transfer":
            body = {"receiverId": other.id, "amount": amount}
            return Attempted(kind, fan.id, key, lambda: http.money("/api/wallet/transfer", fan, body, key),
                             receiver=other.id)
        if kind == "gift":
            body = {"creatorId": creator.id, "amount": amount}
            return Attempted(kind, fan.id, key, lambda: http.money("/api/gifts", fan, body, key))
        if kind == "unlock":
            body = {"contentId": content}
            return Attempted(kind, fan.id, key, lambda: http.money("/api/premium/unlock", fan, body, key))
        if kind == "subscribe":
            body = {"creatorId": creator.id, "autoRenew": True}
            return Attempted(kind, fan.id, key, lambda: http.money("/api/subscription/subscribe", fan, body, key))
        ptx = f"ptx-{key}"
        return Attempted("topup", fan.id, f"provider:{ptx}", lambda: http.webhook(fan.id, amount * 10, ptx))

    def _try(self, item: Attempted, give_up_at: float) -> None:
        delay = 0.1
        while True:
            reply = item.send()
            item.replies.append(reply)
            with self.lock:
                self.answers[reply.status] += 1
                if reply.status == 0 and len(self.transport_errors) < 5:
                    self.transport_errors.append(reply.error or "")
            if item.definite or time.monotonic() >= give_up_at:
                break
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        if item.definite:
            self.tally.add(Sent(item.kind, item.payer, item.key, item.final, receiver=item.receiver))

    def _client(self) -> None:
        while not self.stop_event.is_set():
            item = self._make()
            with self.lock:
                self.attempted.append(item)
            # Keep retrying for a while after the stop so a strike's victims mostly resolve here.
            self._try(item, give_up_at=time.monotonic() + 20)
            if self.think:
                self.stop_event.wait(self.think)

    # -- control -------------------------------------------------------------------------
    def start(self) -> Load:
        for n in range(self.clients):
            t = threading.Thread(target=self._client, name=f"load-{n}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in self.threads), "load threads did not stop"

    def unresolved(self) -> list[Attempted]:
        return [a for a in self.attempted if not a.definite]

    def resolve(self, timeout: float = 120.0) -> int:
        """Retry every request still without a definite answer until it has one.

        A request that died half-way either stored its job (the retry replays it) or
        stored nothing (the retry is a first request): the job is the key's claim, so
        there is no in-between state to wait out (issue 24; a 409 is still retried).
        """
        pending = self.unresolved()
        give_up_at = time.monotonic() + timeout
        fire(lambda item: self._try(item, give_up_at), pending, workers=16)
        still = self.unresolved()
        assert not still, f"{len(still)} request(s) without a definite answer after {timeout}s: " \
                          f"{[a.final for a in still[:3]]}"
        return len(pending)

    def count(self) -> int:
        return len(self.attempted)

    def client_errors(self) -> int:
        return sum(n for status, n in self.answers.items() if status in RETRYABLE)

    def answers_5xx(self) -> dict[int, int]:
        return {s: n for s, n in sorted(self.answers.items()) if s >= 500 or s == 0}

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.1)


# ------------------------------------------------------------------------------ outcome


def queued(db: Any) -> int:
    return db.jobs.count_documents({"status": "queued"})


def payouts_done(db: Any) -> bool:
    """Every payout terminal, the simulator's own event for it arrived, nothing queued."""
    docs = list(db.payouts.find({}, {"status": 1}))
    if any(d["status"] not in ("paid", "failed") for d in docs):
        return False
    keys = {f"event:evt_{d['_id']}_{d['status']}" for d in docs}
    got = {j["idempotencyKey"] for j in db.jobs.find({"type": "payout_event", "idempotencyKey": {"$in": sorted(keys)}},
                                                      {"idempotencyKey": 1})}
    return got == keys and queued(db) == 0


# The stores may still be coming back: a failed probe counts as "not yet".
drain = partial(wait_drained, timeout=240.0, poll=0.2, ignore=(Exception,))
probe_for = partial(wait_for, fail=False, ignore=(Exception,))


def add_system_jobs(db: Any, tally: Tally) -> int:
    """Renewals are started by beat, not by a client: add them so balances add up."""
    added = 0
    for job in db.jobs.find({"type": "renew"}, {"_id": 1, "ownerId": 1, "idempotencyKey": 1}):
        if job["_id"] not in tally.jobs:
            reply = Response(202, {}, b'{"jobId": "%s"}' % job["_id"].encode())
            tally.jobs[job["_id"]] = Sent("renew", job["ownerId"], job["idempotencyKey"], reply)
            added += 1
    return added


def outcome(db: Any, http: ApiClient, tally: Tally, world: World, load: Load | None, *, scenario: str,
            scale: Scale, recovered_at: float, strikes: dict[str, Any], started_at: float) -> dict[str, Any]:
    """Drain, account for every accepted job and build the report row."""
    drain_started = time.monotonic()
    drain(db)
    drained_at = time.monotonic()
    resolved_late = load.resolve() if load is not None else 0
    drain(db)
    add_system_jobs(db, tally)
    tally.collect(http, world.users)
    accepted = tally.accepted_ids
    stored = {j["_id"]: j["status"] for j in db.jobs.find({"_id": {"$in": sorted(accepted)}}, {"status": 1})}
    lost = [j for j in accepted if stored.get(j) not in ("settled", "failed")]
    doubles = doubled(db)
    unacknowledged = [j["_id"] for j in db.jobs.find({"type": {"$ne": "renew"}}, {"_id": 1})
                      if j["_id"] not in accepted]
    counts = Counter(stored.values())
    row = {
        "scenario": scenario,
        "scale": scale.name,
        "requests": load.count() if load else 0,
        "accepted": len(accepted),
        "settled": counts.get("settled", 0),
        "failed": counts.get("failed", 0),
        "lost": len(lost),
        "doubled": len(doubles),
        "unacknowledged": len(unacknowledged),
        "client_retries": load.client_errors() if load else 0,
        "answers_5xx_or_transport": load.answers_5xx() if load else {},
        "transport_errors": load.transport_errors if load else [],
        "resolved_after_recovery": resolved_late,
        "drain_after_recovery_s": round(drained_at - recovered_at, 2),
        "drain_after_load_s": round(drained_at - drain_started, 2),
        "duration_s": round(time.monotonic() - started_at, 1),
        "failure_codes": dict(tally.codes()),
        "strikes": strikes,
    }
    assert not lost, f"{scenario}: {len(lost)} accepted job(s) lost: {lost[:5]}"
    assert not doubles, f"{scenario}: applied twice: {doubles[:5]}"
    assert not unacknowledged, f"{scenario}: jobs no client was told about: {unacknowledged[:5]}"
    assert_told_matches_store(db, tally)
    assert_money_invariants(db, accepted_job_ids=accepted)
    return row


# ------------------------------------------------------------------------------ probes


def worker_lost_count(text: str) -> int:
    """How many SIGKILLs hit a pool process while it was running a task."""
    return len(set(re.findall(r"Worker exited prematurely: signal 9 \(SIGKILL\) Job: (\d+)", text)))


def pool_children(worker: RoleWorker) -> list[psutil.Process]:
    return [p for p in worker.pool_processes() if p.is_running()]


def busy_pool_child(worker: RoleWorker, rng: random.Random, tries: int = 40) -> psutil.Process | None:
    """A pool process that used CPU in the last few milliseconds (else any)."""
    children = pool_children(worker)
    for _ in range(tries):
        try:
            before = {p.pid: sum(p.cpu_times()[:2]) for p in children}
            time.sleep(0.03)
            busy = [p for p in children if sum(p.cpu_times()[:2]) > before[p.pid]]
        except psutil.Error:
            busy = []
        if busy:
            return rng.choice(busy)
        children = pool_children(worker) or children
    return rng.choice(children) if children else None


def kill_pool_children_mid_task(stack: ChaosStack, worker: RoleWorker, db: Any, load: Load, target: int,
                                rng: random.Random) -> tuple[int, int]:
    """SIGKILL busy pool processes while jobs are queued until ``target`` kills landed
    inside a running task (at most ``target + 4`` tries); ``(kills, landed mid-task)``.

    A process burning CPU while jobs are queued is almost certainly inside a settlement
    transaction; a kill that landed between tasks does not count towards the target.
    """
    kills = mid_task = 0
    while mid_task < target and kills < target + 4:
        probe_for(lambda: queued(db) > 0, timeout=10, poll=0.01)
        victim = busy_pool_child(worker, rng)
        assert victim is not None, "the worker has no pool process left"
        victim.send_signal(signal.SIGKILL)
        kills += 1
        assert probe_for(lambda: len(pool_children(worker)) >= 2, timeout=60), "the pool was not refilled"
        load.run_for(1.0)
        mid_task = worker_lost_count(stack.log_text(worker))
    return kills, mid_task


def env_flag(name: str) -> str | None:
    return os.environ.get(name)
