"""What the benches share: the log, the money mix, an HTTP client, meters, draining.

Moved out of ``loadtest/bench.py`` so each stage module (``scale_stages``,
``http_stages``, ``sync_baseline``, ``subscription_stages``) imports what it needs
without importing the orchestrator; ``loadtest/wait_bench.py`` logs and measures
with the same helpers.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from loadtest.proctree import group_usage, own_cpu_seconds
from loadtest.seed import Population, SeedUser, wait_queue_empty
from loadtest.stack import Stack

_log_name = "bench"


def log_as(name: str) -> None:
    """Name the bench in every :func:`log` line from now on (``bench`` until a bench's main says)."""
    global _log_name
    _log_name = name


def log(message: str) -> None:
    """One progress line on stderr: ``[bench 12:00:00] message``."""
    print(f"[{_log_name} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max (nearest rank) and the count."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        index = max(0, min(len(ordered) - 1, int(round(q * len(ordered) + 0.5)) - 1))
        return round(ordered[index], 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": round(ordered[-1], 2),
            "n": len(ordered)}


def dig(data: dict[str, Any], dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; None when any part is missing."""
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, digits)


class CpuMeter:
    """CPU seconds used by each process group (and this process) between start and stop."""

    def __init__(self, stack: Stack, extra: dict[str, list[Any]] | None = None) -> None:
        self.stack = stack
        self.extra = extra or {}
        self.before: dict[str, float] = {}
        self.started = 0.0

    def _now(self) -> dict[str, float]:
        groups = {**self.stack.process_groups(), **self.extra}
        totals = {name: used.cpu_seconds for name, used in group_usage(groups).items()}
        totals["bench client"] = own_cpu_seconds()
        return totals

    def start(self) -> CpuMeter:
        self.before = self._now()
        self.started = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        """Cores used on average per group (1.0 = one core busy all the time)."""
        after = self._now()
        wall = max(1e-6, time.monotonic() - self.started)
        return {k: round((after.get(k, 0.0) - self.before.get(k, 0.0)) / wall, 2) for k in after}


# ------------------------------------------------------------------------------- the money mix


@dataclass(frozen=True)
class Intent:
    kind: str  # transfer | unlock | gift
    payer: SeedUser
    other: str  # receiver, creator or content id
    amount: int | None = None


class MoneyMix:
    """Thread-safe random transfers, unlocks and gifts; never the same unlock twice."""

    def __init__(self, pop: Population, seed: int = 11, kinds: Sequence[str] = ("transfer", "unlock", "gift")) -> None:
        self.pop = pop
        self.rng = random.Random(seed)
        self.kinds = tuple(kinds)
        self.payers = pop.payers
        self.creators = pop.creators
        self.contents = pop.contents
        self.unlocked: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def next(self, kinds: Sequence[str] | None = None) -> Intent:
        with self.lock:
            kind = self.rng.choice(tuple(kinds) if kinds else self.kinds)
            payer = self.rng.choice(self.payers)
            if kind == "unlock":
                for _ in range(20):
                    content = self.rng.choice(self.contents)
                    pair = (payer.id, content.id)
                    if content.creator_id != payer.id and pair not in self.unlocked:
                        self.unlocked.add(pair)
                        return Intent("unlock", payer, content.id)
                kind = "transfer"
            if kind == "gift":
                creator = self.rng.choice(self.creators)
                while creator.id == payer.id:
                    creator = self.rng.choice(self.creators)
                return Intent("gift", payer, creator.id, self.rng.randint(1, 50))
            receiver = self.rng.choice(self.payers)
            while receiver.id == payer.id:
                receiver = self.rng.choice(self.payers)
            return Intent("transfer", payer, receiver.id, self.rng.randint(1, 20))

    def claim_unlock(self, user_id: str, content_id: str) -> None:
        with self.lock:
            self.unlocked.add((user_id, content_id))

    @staticmethod
    def operation(intent: Intent) -> Any:
        from ledger.operations import Gift, Transfer, Unlock

        if intent.kind == "unlock":
            return Unlock(intent.payer.id, intent.other)
        if intent.kind == "gift":
            return Gift(intent.payer.id, intent.other, intent.amount or 1)
        return Transfer(intent.payer.id, intent.other, intent.amount or 1)

    @staticmethod
    def http(intent: Intent) -> tuple[str, dict[str, Any]]:
        if intent.kind == "unlock":
            return "/api/premium/unlock", {"contentId": intent.other}
        if intent.kind == "gift":
            return "/api/gifts", {"creatorId": intent.other, "amount": intent.amount}
        return "/api/wallet/transfer", {"receiverId": intent.other, "amount": intent.amount}


class Http:
    """One keep-alive ``requests.Session`` per thread."""

    def __init__(self, base_url: str, tokens: dict[str, str] | None = None) -> None:
        self.base_url = base_url
        self.tokens = tokens or {}
        self.local = threading.local()

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None,
             timeout: float = 30.0) -> tuple[int, dict[str, Any] | None]:
        """POST JSON; ``(status, JSON body or None)``, status 0 on a connection error."""
        import requests

        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        try:
            r = session.post(self.base_url + path, data=json.dumps(body),
                             headers={"Content-Type": "application/json", **(headers or {})}, timeout=timeout)
        except requests.RequestException:
            self.local.session = None
            return 0, None
        try:
            data = r.json()
        except ValueError:
            data = None
        return r.status_code, data

    def post_money(self, user: SeedUser, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        """A money request as a client sends it: bearer token and a fresh ``Idempotency-Key``."""
        return self.post(path, body, {"Authorization": f"Bearer {self.tokens[user.id]}",
                                      "Idempotency-Key": uuid.uuid4().hex})


def open_loop(send: Callable[[float], Any], rate: float, count: int, start_in: float = 0.0) -> float:
    """Call ``send(scheduled)`` ``count`` times at ``rate`` per second from a pool of 64
    threads, whatever the answers take (an open loop); returns when all are answered,
    with the perf_counter time the schedule started."""
    t0 = time.perf_counter() + start_in
    with ThreadPoolExecutor(max_workers=64) as pool:
        for i in range(count):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, scheduled)
    return t0


def closed_loop(send: Callable[[], bool], threads: int, seconds: float, warmup: float = 0.0,
                on_window: Callable[[], None] | None = None) -> dict[str, Any]:
    """``threads`` clients call ``send`` back to back; count successes inside the measured window.

    Returns the window's start and end (``time.time()``), successes and failures in
    it and per second. ``send`` returns True on success; ``on_window`` is called as the
    measured window opens (a meter or a profiler that must not see the warm-up).
    """
    stop = threading.Event()
    window: dict[str, float] = {}
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def client() -> None:
        while not stop.is_set():
            ok = send()
            now = time.time()
            if window.get("start", float("inf")) <= now <= window.get("end", float("inf")):
                with lock:
                    counts["ok" if ok else "failed"] += 1

    workers = [threading.Thread(target=client, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    time.sleep(warmup)
    if on_window is not None:
        on_window()
    window["start"] = time.time()
    time.sleep(seconds)
    window["end"] = time.time()
    stop.set()
    for w in workers:
        w.join(timeout=60)
    elapsed = window["end"] - window["start"]
    return {"threads": threads, "seconds": round(elapsed, 2), "start": window["start"], "end": window["end"],
            "ok": counts["ok"], "failed": counts["failed"], "ok_per_s": round(counts["ok"] / elapsed, 1)}


# ------------------------------------------------------------------------------- draining


def kick_all() -> None:
    """What the sweeper does: ring every partition, forced."""
    from infra.config import get_settings
    from tasks.settle import ring

    for p in range(get_settings().ledger_partitions):
        ring(p, None, force=True)


def partitions_owed_credits(db: Any, partitions: int) -> list[int]:
    """Partitions with an unapplied deferred credit: one ``credits.inbound`` index probe each."""
    return [p for p in range(partitions)
            if db.credits.find_one({"to": p, "applied": False}, {"_id": 1}) is not None]


def wait_drained(db: Any, timeout: float = 600.0, kick: Callable[[], None] | None = kick_all) -> float:
    """Wait until no job is queued AND every deferred credit is applied; return the seconds.

    A drained queue is not a settled ledger any more: the last batches leave credits
    for their owners' next batch (which the settle task rings at once).
    """
    from infra.config import get_settings

    partitions = get_settings().ledger_partitions
    started = time.monotonic()
    last_kick = started
    while True:
        left = timeout - (time.monotonic() - started)
        wait_queue_empty(db, timeout=max(1.0, left), kick=kick, partitions=partitions)
        if not partitions_owed_credits(db, partitions):
            return time.monotonic() - started
        now = time.monotonic()
        if now - started > timeout:
            raise TimeoutError(f"deferred credits still unapplied after {timeout:.0f} s")
        if kick is not None and now - last_kick > 3:
            kick()
            last_kick = now
        time.sleep(0.05)


def queue_direct(db: Any, mix: MoneyMix, count: int, partitions: int, kinds: Sequence[str] | None = None) -> list[str]:
    """Store ``count`` queued jobs of the mix without ringing (nobody settles them until asked); their ids."""
    from services.jobs import Intake, accept_jobs

    intakes = []
    for _ in range(count):
        intent = mix.next(kinds)
        intakes.append(Intake(mix.operation(intent), intent.payer.id, uuid.uuid4().hex))
    return [job["_id"] for job in accept_jobs(db, intakes, partitions=partitions, ring=None).stored]
