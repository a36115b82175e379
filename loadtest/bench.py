"""``make bench``: Purser's throughput and latency beside the ceilings of its own parts.

``python -m loadtest.bench [--web-workers N] [--worker-concurrency N] [--duration 60] [--quick]``

Starts an isolated stack (fresh SecantusDB and Redis in a temporary directory on
free ports, gunicorn, Celery workers consuming every queue, rate limits off), seeds
users of every tier with contents and plans, funds every wallet through the real
settlement path, then measures in one run:

1. the store ceiling: single-document ``update_one``/s and ``insert_one``/s, one client;
2. the queue ceiling: empty Celery tasks/s through the same Redis and workers;
3. settled money operations/s at saturation (transfers, unlocks, gifts submitted
   directly with ``services.jobs.submit`` from client threads) with
   ``SETTLE_BATCH_MAX=1`` and with the default batch size;
4. per-stage timings of the settle loop, run in-process against the bench store;
5. a fixed offered load of money requests over HTTP: accept and settle percentiles;
6. 200 concurrent unlocks over HTTP: settled how long after the last acceptance;
7. subscription expiry and renewal of due subscriptions;
8. peak RSS of web and worker processes; the money invariants at the end.

It prints a table with the issue's targets (PASS/MISS) and writes
``loadtest/results/<date>.json``. The exit status is 1 when an invariant is broken
(or a stage crashed), 0 otherwise, whether or not targets are met.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from loadtest.seed import (
    Population,
    SeedContent,
    SeedUser,
    fund,
    job_statuses,
    seed_population,
    wait_queue_empty,
    wait_settled,
)
from loadtest.stack import ROOT, MemorySampler, Stack, StackOptions, wait_for

RESULTS = Path(__file__).resolve().parent / "results"
PROFILES = ROOT / "var" / "bench"  # raw profiles: large, not for the repository
DEFAULT_BATCH = 200  # infra.config default of SETTLE_BATCH_MAX

# (key, label, comparison, target): the issue's targets on a 2-core machine.
TARGETS: list[tuple[str, str, str, float]] = [
    ("saturation.batched.ops_per_s", "settled money ops/s (default batch)", ">=", 400.0),
    ("efficiency", "ops/s / store update ceiling", ">=", 0.35),
    ("batch_speedup", "batched / batch size 1", ">=", 4.0),
    ("fixed_load.accept_ms.p99", "accept p99 ms @ fixed load", "<=", 50.0),
    ("fixed_load.settle_ms.p99", "settle p99 ms @ fixed load", "<=", 300.0),
    ("fixed_load.errors", "errors @ fixed load (non-business)", "<=", 0.0),
    ("unlock_burst.settled_within_s", "200 unlocks settled after last accept, s", "<=", 2.0),
]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Plan:
    """Sizes and durations of one run (``--quick`` shrinks them)."""

    duration: float = 60.0
    warmup: float = 3.0
    store_seconds: float = 5.0
    queue_tasks: int = 5000
    fixed_rate: float = 100.0
    fixed_seconds: float = 30.0
    burst: int = 200
    subscriptions: int = 10_000
    stage_jobs: int = 2000
    free: int = 1500
    premium: int = 1000
    creators: int = 100
    submit_threads: int = 4
    quick: bool = False

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(duration=10.0, warmup=2.0, store_seconds=2.0, queue_tasks=1000, fixed_seconds=10.0,
                   subscriptions=2000, stage_jobs=800, free=400, premium=250, creators=40, quick=True)


# ------------------------------------------------------------------------------- helpers


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        index = max(0, min(len(ordered) - 1, int(round(q * len(ordered) + 0.5)) - 1))
        return round(ordered[index], 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99), "max": round(ordered[-1], 2),
            "n": len(ordered)}


def _dig(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip()
        if subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                          timeout=5).stdout.strip():
            commit += " (uncommitted changes)"
    return {"nproc": os.cpu_count(), "cpu_model": model or platform.processor(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "platform": platform.platform(), "commit": commit, "loadavg_start": os.getloadavg()}


class CpuMeter:
    """CPU seconds used by each process group (and this process) between start and stop."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.before: dict[str, float] = {}
        self.started = 0.0

    def _now(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for name, managed in self.stack.process_groups().items():
            total = 0.0
            for proc in managed:
                if proc.pid is None or not proc.alive:
                    continue
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(proc.pid)
                    for p in [root, *root.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            t = p.cpu_times()
                            total += t.user + t.system
            totals[name] = total
        me = psutil.Process().cpu_times()
        totals["bench client"] = me.user + me.system
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

    def next(self) -> Intent:
        with self.lock:
            kind = self.rng.choice(self.kinds)
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

    def __init__(self, base_url: str, tokens: dict[str, str]) -> None:
        self.base_url = base_url
        self.tokens = tokens
        self.local = threading.local()

    def post_money(self, user: SeedUser, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        import requests

        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        headers = {"Authorization": f"Bearer {self.tokens[user.id]}", "Idempotency-Key": uuid.uuid4().hex,
                   "Content-Type": "application/json"}
        try:
            r = session.post(self.base_url + path, data=json.dumps(body), headers=headers, timeout=30)
        except requests.RequestException:
            self.local.session = None
            return 0, None
        try:
            data = r.json()
        except ValueError:
            data = None
        return r.status_code, data


# ------------------------------------------------------------------------------- stages


def store_ceiling(db: Any, seconds: float) -> dict[str, Any]:
    """Single-document update_one/s and insert_one/s from one client, back to back."""
    scratch = db.bench_update
    scratch.drop()
    scratch.insert_many([{"_id": i, "n": 0} for i in range(1000)])
    n, end = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        scratch.update_one({"_id": n % 1000}, {"$inc": {"n": 1}})
        n += 1
    updates = n / (time.perf_counter() - started)
    inserts_coll = db.bench_insert
    inserts_coll.drop()
    n, end = 0, time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < end:
        inserts_coll.insert_one({"n": n, "payload": "x" * 64})
        n += 1
    inserts = n / (time.perf_counter() - started)
    n, end = 0, time.perf_counter() + min(seconds, 2.0)
    started = time.perf_counter()
    while time.perf_counter() < end:
        scratch.find_one({"_id": n % 1000})
        n += 1
    reads = n / (time.perf_counter() - started)
    scratch.drop()
    inserts_coll.drop()
    return {"update_one_per_s": round(updates, 1), "insert_one_per_s": round(inserts, 1),
            "find_one_per_s": round(reads, 1), "seconds_each": seconds,
            "txn_insert_ms_per_doc_by_secondary_indexes": index_cost(db)}


def index_cost(db: Any, docs: int = 200, rounds: int = 3) -> dict[str, float]:
    """ms per document of ``insert_many`` inside one transaction, by number of secondary indexes
    (keys "0", "2", "4"), and of a ``bulk_write`` of ``$inc`` updates by ``_id`` ("update_0").

    The settle transaction is mostly inserts and updates of indexed documents; this
    isolates what one more index costs the store per document.
    """
    from pymongo import ASCENDING, IndexModel, UpdateOne

    out: dict[str, float] = {}
    for count in (0, 2, 4):
        coll = db[f"bench_index_{count}"]
        coll.drop()
        db.create_collection(coll.name)
        if count:
            coll.create_indexes([IndexModel([(f"f{i}", ASCENDING)]) for i in range(count)])
        best = float("inf")
        for r in range(rounds):
            batch = [{"_id": f"{r}-{n}", **{f"f{i}": f"{r}-{n}-{i}" for i in range(4)}, "pad": "x" * 200}
                     for n in range(docs)]
            started = time.perf_counter()
            with db.client.start_session() as session, session.start_transaction():
                coll.insert_many(batch, session=session)
            best = min(best, time.perf_counter() - started)
        out[str(count)] = round(1000 * best / docs, 3)
        if count == 0:
            # The same documents updated ($inc by _id) in one transaction: what a wallet or job write costs.
            best_update = float("inf")
            for r in range(rounds):
                ops = [UpdateOne({"_id": f"{r}-{n}"}, {"$inc": {"v": 1}}) for n in range(docs)]
                started = time.perf_counter()
                with db.client.start_session() as session, session.start_transaction():
                    coll.bulk_write(ops, session=session)
                best_update = min(best_update, time.perf_counter() - started)
            out["update_0"] = round(1000 * best_update / docs, 3)
        coll.drop()
    return out


def queue_ceiling(stack: Stack, tasks: int) -> dict[str, Any]:
    """Empty tasks/s: fill a queue the workers do not consume yet, then let them drain it."""
    from tasks.bench import noop
    from workers.celery_app import app

    queue = f"bench.noop.{uuid.uuid4().hex[:6]}"
    redis = _redis()
    started = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(tasks):
            noop.apply_async(args=[i], queue=queue, producer=producer)
    publish_rate = tasks / (time.perf_counter() - started)
    if redis.llen(queue) != tasks:
        log(f"queue ceiling: {redis.llen(queue)} of {tasks} messages in {queue}")
    nodes = [w.nodename for w in stack.workers]
    t0 = time.perf_counter()
    replies = app.control.add_consumer(queue, destination=nodes, reply=True, timeout=5)
    drained = wait_for(lambda: redis.llen(queue) == 0 and redis.hlen("unacked") == 0, timeout=300, poll=0.01)
    elapsed = time.perf_counter() - t0
    with contextlib.suppress(Exception):
        app.control.cancel_consumer(queue, destination=nodes, reply=True, timeout=5)
    redis.delete(queue)
    return {"tasks": tasks, "tasks_per_s": round(tasks / elapsed, 1) if drained else None,
            "publish_per_s": round(publish_rate, 1), "drained": drained,
            "consumers_added": len(replies or [])}


def _redis() -> Any:
    from infra.redis_client import get_redis

    return get_redis()


def _kick_all() -> None:
    """What the sweeper does: ring every partition, forced."""
    from infra.config import get_settings
    from tasks.settle import ring

    for p in range(get_settings().ledger_partitions):
        ring(p, None, force=True)


def wait_drained(db: Any, timeout: float = 600.0) -> float:
    return wait_queue_empty(db, timeout=timeout, kick=_kick_all)


def saturation(stack: Stack, db: Any, mix: MoneyMix, plan: Plan, batch_max: int) -> dict[str, Any]:
    """Settled ops/s for ``plan.duration`` s with a backlog kept queued by direct submitters."""
    from infra.config import get_settings
    from services.jobs import submit
    from tasks.settle import ring

    partitions = get_settings().ledger_partitions
    cap = max(400, min(4000, 2 * batch_max * partitions))
    stop = threading.Event()
    backlog = {"now": 0}
    samples: list[int] = []
    submitted: Counter[str] = Counter()
    lock = threading.Lock()
    done_before = stack.worker_metrics().get("jobs", 0.0)

    def monitor() -> None:
        # The backlog is what was submitted minus what the workers report as decided
        # (their metrics port): watching it costs the store nothing.
        while not stop.is_set():
            with contextlib.suppress(Exception):
                done = stack.worker_metrics().get("jobs", 0.0) - done_before
                with lock:
                    backlog["now"] = int(submitted["n"] - done)
                samples.append(backlog["now"])
            stop.wait(0.25)

    def submitter() -> None:
        while not stop.is_set():
            if backlog["now"] >= cap:
                time.sleep(0.005)
                continue
            intent = mix.next()
            submit(db, mix.operation(intent), intent.payer.id, partitions=partitions, ring=ring,
                   idempotency_key=uuid.uuid4().hex)
            with lock:
                submitted["n"] += 1
                backlog["now"] += 1

    threads = [threading.Thread(target=monitor, daemon=True)]
    threads += [threading.Thread(target=submitter, daemon=True) for _ in range(plan.submit_threads)]
    for t in threads:
        t.start()
    time.sleep(plan.warmup)
    samples.clear()
    metrics0 = stack.worker_metrics()
    cpu = CpuMeter(stack).start()
    t0 = datetime.now(UTC)
    time.sleep(plan.duration)
    t1 = datetime.now(UTC)
    cores = cpu.stop()
    metrics1 = stack.worker_metrics()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    drain = wait_drained(db)
    window = {"settledAt": {"$gte": t0, "$lt": t1}}
    settled = db.jobs.count_documents({**window, "status": "settled"})
    failed = db.jobs.count_documents({**window, "status": "failed"})
    seconds = (t1 - t0).total_seconds()
    delta = {k: metrics1.get(k, 0.0) - metrics0.get(k, 0.0) for k in metrics1}
    batches = delta.get("batches", 0.0)
    return {
        "batch_max": batch_max, "seconds": round(seconds, 1),
        "ops_per_s": round(settled / seconds, 1), "failed_per_s": round(failed / seconds, 1),
        "settled": settled, "failed": failed, "submitted": submitted["n"],
        "submission": f"direct services.jobs.submit from {plan.submit_threads} threads, backlog capped at {cap}",
        "backlog_mean": round(sum(samples) / len(samples), 1) if samples else None,
        "backlog_min": min(samples) if samples else None,
        "batches": int(batches), "mean_batch_size": round(delta.get("jobs", 0.0) / batches, 1) if batches else None,
        "mean_batch_ms": round(1000 * delta.get("batch_seconds", 0.0) / batches, 1) if batches else None,
        "conflict_retries": int(delta.get("conflict_retries", 0.0)),
        "cpu_cores": cores, "drain_after_s": round(drain, 1),
    }


class StageClock:
    """Wraps the settle loop's stages (module attributes, this process only) to time them."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str | Callable[..., str]) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            key = label(*args, **kwargs) if callable(label) else label
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - started
                self.calls[key] += 1

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original))

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def _queue_direct(db: Any, mix: MoneyMix, count: int, partitions: int) -> None:
    """Insert ``count`` queued jobs without ringing (nobody consumes them until settled in-process)."""
    from services.jobs import build_job

    jobs = []
    for _ in range(count):
        intent = mix.next()
        jobs.append(build_job(mix.operation(intent), intent.payer.id, partitions, None, uuid.uuid4().hex))
    for start in range(0, len(jobs), 500):
        db.jobs.insert_many(jobs[start:start + 500], ordered=False)


def _settle_in_process(db: Any, partitions: int, batch_max: int, threads: int) -> tuple[list[Any], float]:
    """Drain every partition with ``threads`` concurrent settlers (partitions dealt round-robin)."""
    import services.settlement as settlement

    batches: list[Any] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(mine: list[int]) -> None:
        try:
            for p in mine:
                drained = settlement.settle_partition(db, p, partitions=partitions, batch_max=batch_max)
                with lock:
                    batches.extend(drained.batches)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(list(range(t, partitions, threads)),)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return batches, time.perf_counter() - started


def stage_timings(stack: Stack, db: Any, mix: MoneyMix, plan: Plan, batch_max: int,
                  profile_html: Path | None) -> dict[str, Any]:
    """The settle loop in this process against the bench store, workers stopped.

    Round 1: one settler, every stage timed (and profiled with pyinstrument when asked).
    Round 2: two concurrent settlers on disjoint partitions, as the default worker pool
    runs them, counting transaction attempts per committed batch: with_transaction
    re-runs a batch silently on a transient write conflict, which the worker metrics
    cannot see.
    """
    from pymongo.client_session import ClientSession

    import services.settlement as settlement
    from infra.config import get_settings

    partitions = get_settings().ledger_partitions
    stack.stop_workers()
    result: dict[str, Any] = {"batch_max": batch_max}
    try:
        _queue_direct(db, mix, plan.stage_jobs, partitions)
        clock = StageClock()
        clock.wrap(settlement, "_queued", "read queued jobs")
        clock.wrap(settlement, "load_snapshot", "read snapshot (wallets, contents, unlocks, subs)")
        clock.wrap(settlement, "decide_batch", "decide (pure domain rules)")
        clock.wrap(settlement, "_bulk", lambda _db, name, ops, session: f"write {name} (bulk_write)")
        clock.wrap(settlement.audit, "seal", "audit hash chain (sha256)")
        clock.wrap(ClientSession, "start_transaction", "start transaction")
        clock.wrap(ClientSession, "commit_transaction", "commit transaction")
        clock.wrap(type(db.partitions), "find_one", "read partition doc / other find_one")
        clock.wrap(type(db.partitions), "update_one", "write partition seq (update_one)")
        profiler = None
        if profile_html is not None:
            with contextlib.suppress(ImportError):
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.001)
        try:
            if profiler is not None:
                profiler.start()
            batches, total = _settle_in_process(db, partitions, batch_max, threads=1)
        finally:
            if profiler is not None:
                profiler.stop()
            clock.restore()
        jobs = sum(b.size for b in batches)
        if profiler is not None and profile_html is not None:
            profile_html.parent.mkdir(parents=True, exist_ok=True)
            profile_html.write_text(profiler.output_html())
            result["profile_html"] = str(profile_html)
        result.update({
            "jobs": jobs, "batches": len(batches), "seconds": round(total, 2),
            "ops_per_s_one_settler": round(jobs / total, 1) if total else None,
            "stages": {k: {"seconds": round(v, 3), "share": round(v / total, 3), "calls": clock.calls[k],
                           "us_per_job": round(1e6 * v / max(1, jobs), 1)}
                       for k, v in sorted(clock.seconds.items(), key=lambda kv: -kv[1])},
            "note": "stage times nest: bulk writes are inside the transaction, the audit seal inside the "
                    "batch; 'read partition doc / other find_one' is every Collection.find_one",
        })

        _queue_direct(db, mix, plan.stage_jobs, partitions)
        attempts = StageClock()
        attempts.wrap(ClientSession, "start_transaction", "attempts")
        attempts.wrap(ClientSession, "commit_transaction", "commits")
        try:
            batches2, total2 = _settle_in_process(db, partitions, batch_max, threads=2)
        finally:
            attempts.restore()
        jobs2 = sum(b.size for b in batches2)
        useful = len(batches2)
        result["two_settlers"] = {
            "jobs": jobs2, "batches": useful, "seconds": round(total2, 2),
            "ops_per_s": round(jobs2 / total2, 1) if total2 else None,
            "transaction_attempts": attempts.calls["attempts"],
            # Every drain ends with one empty (read-only) transaction per partition.
            "attempts_per_batch": round((attempts.calls["attempts"] - partitions) / useful, 2) if useful else None,
            "visible_retries": sum(b.retries for b in batches2),
        }
    finally:
        stack.start_workers({"SETTLE_BATCH_MAX": str(batch_max)})
    return result


def fixed_load(db: Any, http: Http, mix: MoneyMix, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop money requests at ``rate``/s over HTTP; settle latency from the job documents."""
    count = int(rate * seconds)
    accept_ms: list[float] = []
    lag_ms: list[float] = []
    statuses: Counter[int] = Counter()
    job_ids: list[str] = []
    lock = threading.Lock()

    def send(scheduled: float) -> None:
        intent = mix.next()
        path, body = mix.http(intent)
        t = time.perf_counter()
        status, data = http.post_money(intent.payer, path, body)
        elapsed = 1000 * (time.perf_counter() - t)
        with lock:
            statuses[status] += 1
            lag_ms.append(1000 * (t - scheduled))
            if status == 202 and data:
                accept_ms.append(elapsed)
                job_ids.append(data["jobId"])

    t0 = time.perf_counter() + 0.2
    with ThreadPoolExecutor(max_workers=64) as pool:
        for i in range(count):
            scheduled = t0 + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(send, scheduled)
    offered = count / (time.perf_counter() - t0)
    counts = wait_settled(db, job_ids, timeout=300, kick=_kick_all)
    settle_ms: list[float] = []
    codes: Counter[str] = Counter()
    for job in job_statuses(db, job_ids).values():
        if job.get("settledAt") and job.get("createdAt"):
            settle_ms.append((job["settledAt"] - job["createdAt"]).total_seconds() * 1000)
        if job["status"] == "failed":
            codes[(job.get("error") or {}).get("code", "?")] += 1
    errors = sum(n for s, n in statuses.items() if s != 202)
    return {"offered_per_s": round(offered, 1), "requests": count, "statuses": dict(statuses),
            "errors": errors, "accept_ms": percentiles(accept_ms), "settle_ms": percentiles(settle_ms),
            "dispatch_lag_ms": percentiles(lag_ms), "jobs": counts, "business_failures": dict(codes),
            "settle_measure": "settledAt - createdAt of each job document (ms precision)"}


def unlock_burst(db: Any, http: Http, pop: Population, mix: MoneyMix, n: int) -> dict[str, Any]:
    """``n`` different fans unlock one new piece of content at the same moment."""
    from ledger.timeutil import utcnow

    creator = pop.creators[0]
    content = SeedContent(uuid.uuid4().hex[:24], creator.id, 10)
    db.contents.insert_one({"_id": content.id, "creatorId": creator.id, "title": "burst", "price": 10,
                            "isActive": True, "createdAt": utcnow()})
    fans = [u for u in pop.payers if u.id != creator.id][:n]
    for fan in fans:
        mix.claim_unlock(fan.id, content.id)
    barrier = threading.Barrier(len(fans))
    accepted: list[tuple[float, str]] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def one(fan: SeedUser) -> None:
        barrier.wait()
        status, data = http.post_money(fan, "/api/premium/unlock", {"contentId": content.id})
        done = time.time()
        with lock:
            statuses[status] += 1
            if status == 202 and data:
                accepted.append((done, data["jobId"]))

    threads = [threading.Thread(target=one, args=(fan,)) for fan in fans]
    first = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    last_accept = max((a for a, _ in accepted), default=time.time())
    ids = [j for _, j in accepted]
    counts = wait_settled(db, ids, timeout=120, kick=_kick_all)
    settled_at = [j["settledAt"].timestamp() for j in job_statuses(db, ids).values() if j.get("settledAt")]
    latest = max(settled_at, default=last_accept)
    return {"requests": len(fans), "statuses": dict(statuses), "jobs": counts,
            "accept_window_s": round(last_accept - first, 3),
            "settled_within_s": round(max(0.0, latest - last_accept), 3),
            "note": "all fans unlock one content of one creator: every batch credits the same creator "
                    "and platform wallets"}


def subscription_figures(db: Any, pop: Population, count: int) -> dict[str, Any]:
    from infra.config import get_settings
    from ledger.timeutil import to_ms, utcnow
    from services.subscriptions import tick
    from tasks.settle import ring

    settings = get_settings()
    subscribers = [u for u in pop.payers if u.role != "creator"]
    creators = pop.creators

    def insert(auto_renew: bool) -> list[dict[str, Any]]:
        now = utcnow()
        docs = []
        for i in range(count):
            sub = subscribers[i % len(subscribers)]
            creator = creators[(i // len(subscribers) + (0 if auto_renew else 1)) % len(creators)]
            expires = to_ms(now - timedelta(minutes=5) - timedelta(milliseconds=i))
            docs.append({"_id": uuid.uuid4().hex[:24], "subscriberId": sub.id, "creatorId": creator.id,
                         "price": pop.plans[creator.id], "periodDays": 30, "status": "active",
                         "autoRenew": auto_renew, "startedAt": expires - timedelta(days=30), "expiresAt": expires,
                         "renewals": 0, "jobId": None, "createdAt": now, "seeded": "bench"})
        for start in range(0, len(docs), 1000):
            db.subscriptions.insert_many(docs[start:start + 1000], ordered=False)
        return docs

    insert(auto_renew=False)
    started = time.perf_counter()
    res = tick(db, chunk=settings.subscription_chunk, partitions=settings.ledger_partitions, ring=ring)
    expire_s = time.perf_counter() - started
    expired = {"count": count, "expired": res.expired, "tick_s": round(expire_s, 2),
               "per_s": round(res.expired / expire_s, 1) if expire_s else None}

    docs = insert(auto_renew=True)
    started = time.perf_counter()
    res = tick(db, chunk=settings.subscription_chunk, partitions=settings.ledger_partitions, ring=ring)
    tick_s = time.perf_counter() - started
    from services.subscriptions import renewal_job_id, renewal_key

    job_ids = [renewal_job_id(renewal_key(d["_id"], d["expiresAt"])) for d in docs]
    counts = wait_settled(db, job_ids, timeout=900, kick=_kick_all)
    all_s = time.perf_counter() - started
    renewed = {"count": count, "submitted": res.renewals_submitted, "tick_s": round(tick_s, 2),
               "all_settled_s": round(all_s, 2), "jobs": counts,
               "renewals_per_s": round(counts.get("settled", 0) / all_s, 1) if all_s else None}
    return {"without_renewal": expired, "with_renewal": renewed}


def check_invariants(db: Any) -> dict[str, Any]:
    from tests.support.invariants import assert_money_invariants

    drain = wait_drained(db)
    started = time.perf_counter()
    try:
        figures = assert_money_invariants(db)
    except AssertionError as exc:
        return {"ok": False, "error": str(exc)[:2000], "drain_s": round(drain, 1)}
    return {"ok": True, **figures, "check_s": round(time.perf_counter() - started, 1), "drain_s": round(drain, 1)}


# ------------------------------------------------------------------------------- py-spy


def pyspy_available() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


def pyspy_start(pid: int, seconds: float, out: Path, subprocesses: bool = False,
                gil: bool = False) -> subprocess.Popen[bytes] | None:
    binary = pyspy_available()
    if binary is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100",
               "--format", "raw", "--output", str(out), "--nonblocking"]
    if subprocesses:
        command.append("--subprocesses")
    if gil:
        command.append("--gil")  # only the thread holding the GIL: where a GIL-bound process burns CPU
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_collapsed(path: Path, top: int = 12) -> dict[str, Any]:
    """Inclusive and self sample shares per function from py-spy's raw (collapsed) output."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return {"samples": 0}
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        frames = [f.strip() for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        total += count
        leaf[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += count
    if not total:
        return {"samples": 0}
    # Frames present in nearly every sample (thread bootstrap, the server's accept loop) say nothing.
    return {"samples": total,
            "inclusive": [(f, round(n / total, 3)) for f, n in inclusive.most_common(top * 4)
                          if n < 0.95 * total and not f.startswith(("<module>", "process ", "thread "))][:top],
            "self": [(f, round(n / total, 3)) for f, n in leaf.most_common(top)]}


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    parts = file.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{name} ({short})" if where else name


# ------------------------------------------------------------------------------- report


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, label, op, target in TARGETS:
        value = _dig(results, key)
        if value is None:
            verdict = "n/a"
        elif op == ">=":
            verdict = "PASS" if value >= target else "MISS"
        else:
            verdict = "PASS" if value <= target else "MISS"
        rows.append({"key": key, "label": label, "value": value, "target": f"{op} {target:g}", "verdict": verdict})
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(results: dict[str, Any]) -> str:
    r = results
    rows: list[tuple[str, Any, str, str]] = []

    def add(label: str, key: str, target: str = "", verdict: str = "") -> None:
        rows.append((label, _dig(r, key), target, verdict))

    add("store: update_one/s (1 client)", "store.update_one_per_s")
    add("store: insert_one/s (1 client)", "store.insert_one_per_s")
    add("store: find_one/s (1 client)", "store.find_one_per_s")
    add("store: txn ms/doc insert 0/2/4 idx, update", "store.txn_summary")
    add("queue: empty Celery tasks/s", "queue.tasks_per_s")
    add("settled ops/s, SETTLE_BATCH_MAX=1", "saturation.batch1.ops_per_s")
    add("  mean batch size / ms, conflict retries", "saturation.batch1.summary")
    verdicts = {row["key"]: row for row in r.get("targets", [])}

    def target(key: str) -> None:
        row = verdicts.get(key)
        if row:
            rows.append((row["label"], row["value"], row["target"], row["verdict"]))

    target("saturation.batched.ops_per_s")
    add("  mean batch size / ms, conflict retries", "saturation.batched.summary")
    target("efficiency")
    target("batch_speedup")
    add("in-process settle ops/s: 1 settler", "stages.ops_per_s_one_settler")
    add("in-process settle ops/s: 2 settlers", "stages.two_settlers.ops_per_s")
    add("  transaction attempts per batch (2 settlers)", "stages.two_settlers.attempts_per_batch")
    add("fixed load: offered req/s", "fixed_load.offered_per_s")
    add("fixed load: accept p50 / p95 ms", "fixed_load.accept_ms.p50_p95")
    target("fixed_load.accept_ms.p99")
    add("fixed load: settle p50 / p95 ms", "fixed_load.settle_ms.p50_p95")
    target("fixed_load.settle_ms.p99")
    target("fixed_load.errors")
    target("unlock_burst.settled_within_s")
    add("subscriptions: expire N (tick s)", "subscriptions.without_renewal.summary")
    add("subscriptions: renew N (tick s / all settled s)", "subscriptions.with_renewal.summary")
    add("peak RSS web MiB", "memory_mib.web")
    add("peak RSS worker MiB", "memory_mib.worker")
    add("peak RSS mongodb / redis MiB", "memory_mib.stores")
    add("money invariants", "invariants.verdict")
    width = max(len(row[0]) for row in rows) + 2
    lines = [f"{'measure':<{width}}{'measured':>22}  {'target':>10}  verdict", "-" * (width + 44)]
    for label, value, tgt, verdict in rows:
        lines.append(f"{label:<{width}}{_fmt(value):>22}  {tgt:>10}  {verdict}")
    return "\n".join(lines)


def _summaries(results: dict[str, Any]) -> None:
    """Short composite strings for the table."""
    cost = _dig(results, "store.txn_insert_ms_per_doc_by_secondary_indexes")
    if isinstance(cost, dict):
        results["store"]["txn_summary"] = " / ".join(f"{cost.get(k, 0):.2f}" for k in ("0", "2", "4")) + \
            f", {cost.get('update_0', 0):.2f}"
    for name in ("batch1", "batched"):
        s = _dig(results, f"saturation.{name}")
        if isinstance(s, dict):
            s["summary"] = f"{_fmt(s.get('mean_batch_size'))} / {_fmt(s.get('mean_batch_ms'))} / " \
                           f"{_fmt(s.get('conflict_retries'))}"
    for name in ("accept_ms", "settle_ms"):
        p = _dig(results, f"fixed_load.{name}")
        if isinstance(p, dict):
            p["p50_p95"] = f"{_fmt(p.get('p50'))} / {_fmt(p.get('p95'))}"
    subs = results.get("subscriptions")
    if isinstance(subs, dict):
        a, b = subs.get("without_renewal", {}), subs.get("with_renewal", {})
        a["summary"] = f"{_fmt(a.get('count'))} in {_fmt(a.get('tick_s'))} s"
        b["summary"] = f"{_fmt(b.get('count'))}: {_fmt(b.get('tick_s'))} / {_fmt(b.get('all_settled_s'))} s"
    inv = results.get("invariants")
    if isinstance(inv, dict):
        inv["verdict"] = "hold" if inv.get("ok") else "BROKEN"


# ------------------------------------------------------------------------------- main


@contextlib.contextmanager
def stage(results: dict[str, Any], name: str) -> Iterator[None]:
    log(f"stage: {name}")
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - one broken stage must not hide the others
        traceback.print_exc()
        results.setdefault("stage_errors", {})[name] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        results.setdefault("stage_seconds", {})[name] = round(time.perf_counter() - started, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--web-workers", type=int, default=2, help="gunicorn worker processes (default 2)")
    parser.add_argument("--web-threads", type=int, default=8, help="threads per gunicorn worker (default 8)")
    parser.add_argument("--worker-concurrency", type=int, default=1,
                        help="Celery prefork pool processes per worker node (default 1, as the Procfile)")
    parser.add_argument("--worker-nodes", type=int, default=1, help="Celery worker nodes (default 1)")
    parser.add_argument("--duration", type=float, default=None, help="saturation seconds per batch size (60)")
    parser.add_argument("--quick", action="store_true", help="~10 s stages and a smaller population")
    parser.add_argument("--rate", type=float, default=100.0, help="fixed offered load, requests/s (100)")
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of web and workers (INFO)")
    parser.add_argument("--batch-max", type=int, default=DEFAULT_BATCH,
                        help="the default batch size to compare with 1 (200, as infra.config)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the store and the workers during the batched saturation run and "
                             "pyinstrument the in-process settle loop (raw files in var/bench/)")
    parser.add_argument("--skip", default="", help="comma-separated stages to skip: store,queue,saturation,"
                                                   "stages,fixed,burst,subscriptions")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (data, logs)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (loadtest/results/<date>.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.quick_plan() if args.quick else Plan()
    if args.duration is not None:
        plan.duration = args.duration
    plan.fixed_rate = args.rate
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    stamp = datetime.now().strftime("%Y-%m-%dT%H%M%S")
    out = args.output or RESULTS / f"{stamp}{'-quick' if plan.quick else ''}.json"
    options = StackOptions(web_workers=args.web_workers, web_threads=args.web_threads,
                           worker_concurrency=args.worker_concurrency, worker_nodes=args.worker_nodes,
                           log_level=args.log_level, keep=args.keep)
    results: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m loadtest.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(), "plan": plan.__dict__.copy(), "stack": options.__dict__.copy(),
    }
    log(f"machine: {results['machine']['nproc']} cores, load average {results['machine']['loadavg_start']}")
    exit_code = 0
    stack = Stack(options)
    sampler: MemorySampler | None = None
    try:
        stack.start_stores()
        log(f"stores up in {stack.tmp} (mongo :{stack.mongo.port}, redis :{stack.redis.port})")
        from api.auth import issue_token
        from infra.config import get_settings
        from infra.mongo import get_db
        from tasks.settle import ring

        settings = get_settings()
        db = get_db()
        stack.start_workers()
        stack.start_web()
        assert stack.web is not None
        sampler = MemorySampler(stack).start()
        log(f"web {stack.web.base_url}, {len(stack.workers)} worker node(s) x {options.worker_concurrency}")

        with stage(results, "seed"):
            started = time.perf_counter()
            pop = seed_population(db, free=plan.free, premium=plan.premium, creators=plan.creators)
            funding = fund(db, [u.id for u in pop.payers], 1_000_000, partitions=settings.ledger_partitions,
                           ring=ring, kick=_kick_all)
            results["seed"] = {"users": len(pop.users), "by_role": dict(Counter(u.role for u in pop.users)),
                               "contents": len(pop.contents), "plans": len(pop.plans), "funded": funding,
                               "seconds": round(time.perf_counter() - started, 1)}
        tokens = {u.id: issue_token(settings, u.id, u.role)[0] for u in pop.users}
        mix = MoneyMix(pop)
        http = Http(stack.web.base_url, tokens)

        if "store" not in skip:
            with stage(results, "store"):
                results["store"] = store_ceiling(db, plan.store_seconds)
        if "queue" not in skip:
            with stage(results, "queue"):
                results["queue"] = queue_ceiling(stack, plan.queue_tasks)
        if "saturation" not in skip:
            sat: dict[str, Any] = {}
            results["saturation"] = sat
            with stage(results, "saturation batch 1"):
                stack.restart_workers({"SETTLE_BATCH_MAX": "1"})
                sat["batch1"] = saturation(stack, db, mix, plan, 1)
            with stage(results, "saturation batched"):
                stack.restart_workers({"SETTLE_BATCH_MAX": str(args.batch_max)})
                spies: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
                if args.profile:
                    seconds = min(plan.duration, 30) + plan.warmup
                    for name, pid, sub, gil in (("mongodb", stack.mongo.pid, False, True),
                                                ("worker", stack.workers[0].pid, True, False)):
                        path = PROFILES / f"{stamp}-pyspy-{name}.txt"
                        proc = pyspy_start(pid or 0, seconds, path, subprocesses=sub, gil=gil)
                        if proc is not None:
                            spies.append((name, path, proc))
                sat["batched"] = saturation(stack, db, mix, plan, args.batch_max)
                for name, path, proc in spies:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=60)
                    results.setdefault("profile", {})[f"pyspy_{name}"] = {"file": str(path),
                                                                          **summarize_collapsed(path)}
        if "stages" not in skip:
            with stage(results, "stage timings"):
                html = PROFILES / f"{stamp}-pyinstrument-settle.html" if args.profile else None
                results["stages"] = stage_timings(stack, db, mix, plan, args.batch_max, html)
        if "fixed" not in skip:
            with stage(results, "fixed load"):
                results["fixed_load"] = fixed_load(db, http, mix, plan.fixed_rate, plan.fixed_seconds)
        if "burst" not in skip:
            with stage(results, "unlock burst"):
                results["unlock_burst"] = unlock_burst(db, http, pop, mix, plan.burst)
        if "subscriptions" not in skip:
            with stage(results, "subscriptions"):
                results["subscriptions"] = subscription_figures(db, pop, plan.subscriptions)
        with stage(results, "invariants"):
            results["invariants"] = check_invariants(db)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        results.setdefault("stage_errors", {})["setup"] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        if sampler is not None:
            sampler.sample()
            peaks = sampler.stop()
            results["memory_mib"] = {k: round(v / 2**20, 1) for k, v in peaks.items()}
            results["memory_mib"]["stores"] = f"{results['memory_mib'].get('mongodb', 0):,.0f} / " \
                                              f"{results['memory_mib'].get('redis', 0):,.0f}"
        results["machine"]["loadavg_end"] = os.getloadavg()
        stack.close()

    sat_b, sat_1 = _dig(results, "saturation.batched.ops_per_s"), _dig(results, "saturation.batch1.ops_per_s")
    ceiling = _dig(results, "store.update_one_per_s")
    if sat_b is not None and ceiling:
        results["efficiency"] = round(sat_b / ceiling, 3)
    if sat_b is not None and sat_1:
        results["batch_speedup"] = round(sat_b / sat_1, 2)
    _summaries(results)
    results["targets"] = evaluate(results)
    inv_ok = _dig(results, "invariants.ok")
    if inv_ok is not True or results.get("stage_errors"):
        exit_code = 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(table(results))
    print()
    load = results["machine"]
    print(f"machine: {load['nproc']} cores, {load['cpu_model']}, {load['ram_gib']} GiB; load average "
          f"start {tuple(round(x, 2) for x in load['loadavg_start'])} end "
          f"{tuple(round(x, 2) for x in load['loadavg_end'])}")
    for name in ("batch1", "batched"):
        s = _dig(results, f"saturation.{name}")
        if isinstance(s, dict):
            print(f"saturation {name}: {s.get('submission')}; backlog mean {s.get('backlog_mean')}; "
                  f"CPU cores used {s.get('cpu_cores')}")
    if results.get("stage_errors"):
        print(f"stage errors: {results['stage_errors']}")
    if inv_ok is False:
        print(f"INVARIANTS BROKEN: {_dig(results, 'invariants.error')}")
    print(f"results: {out}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
