"""Stages over HTTP against the benchmark's gunicorn: accept capacity, fixed load, the unlock burst."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from devstack.apps import WebServer
from loadtest.commands import per_request, top_delta, top_snapshot
from loadtest.common import Http, MoneyMix, closed_loop, kick_all, open_loop, percentiles, wait_drained
from loadtest.seed import Population, SeedContent, SeedUser, job_statuses, wait_settled
from loadtest.stack import ROOT, Stack


def _accept_run(db: Any, http: Http, mix: MoneyMix, threads: int, seconds: float,
                warmup: float) -> tuple[dict[str, Any], list[str]]:
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    job_ids: list[str] = []
    answered: list[tuple[float, float]] = []  # (time.time() at the 202, ms it took)

    def send() -> bool:
        intent = mix.next()
        path, body = mix.http(intent)
        t = time.perf_counter()
        status, data = http.post_money(intent.payer, path, body)
        elapsed = 1000 * (time.perf_counter() - t)
        with lock:
            statuses[status] += 1
            if status == 202 and data:
                job_ids.append(data["jobId"])
                answered.append((time.time(), elapsed))
        return status == 202

    before = top_snapshot(db.client, db.name)
    loop = closed_loop(send, threads, seconds, warmup)
    after = top_snapshot(db.client, db.name)
    accepted = statuses.get(202, 0)
    in_window = [ms for at, ms in answered if loop["start"] <= at <= loop["end"]]
    return {"threads": threads, "seconds": loop["seconds"], "accepted_per_s": loop["ok_per_s"],
            "accepted": accepted, "statuses": dict(statuses), "accept_ms": percentiles(in_window),
            **per_request(top_delta(before, after), accepted)}, job_ids


def _linger_run(stack: Stack, db: Any, http: Http, mix: MoneyMix, threads: int, seconds: float,
                warmup: float, linger_ms: float) -> tuple[dict[str, Any], list[str]]:
    """The accept run again against a second gunicorn (same workers count) with group commit on
    (``ACCEPT_LINGER_MS``); the stack's own web, linger 0, stays up and idle meanwhile."""
    assert stack.web is not None
    web = WebServer(stack.child_env({"ACCEPT_LINGER_MS": f"{linger_ms:g}"}),
                    stack.tmp / "logs" / f"web-linger-{linger_ms:g}.log",
                    concurrency=stack.options.web_workers, cwd=ROOT).start()
    try:
        run, ids = _accept_run(db, Http(web.base_url, http.tokens), mix, threads, seconds, warmup)
        return {"linger_ms": linger_ms, **run, "batches": _batch_sizes(web.base_url)}, ids
    finally:
        web.stop()


def _batch_sizes(base_url: str) -> dict[str, float | None]:
    """Group-commit writes and mean jobs per write, from the web's ``/metrics``."""
    import requests

    try:
        text = requests.get(f"{base_url}/metrics", timeout=10).text
    except requests.RequestException:
        return {"writes": None, "mean_size": None}
    values = {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
              if line.startswith("purser_accept_batch_size_")}
    writes, jobs = values.get("purser_accept_batch_size_count"), values.get("purser_accept_batch_size_sum")
    return {"writes": writes, "mean_size": round(jobs / writes, 2) if writes and jobs else None}


def hot_population(pop: Population, fans: int = 24, creators: int = 8) -> Population:
    """A few active users of ``pop`` (fans and creators): what a role cache sees when callers come back."""
    chosen = [u for u in pop.payers if u.role != "creator"][:fans] + pop.creators[:creators]
    ids = {u.id for u in chosen}
    return Population(password=pop.password, users=chosen,
                      contents=[c for c in pop.contents if c.creator_id in ids] or pop.contents,
                      plans={k: v for k, v in pop.plans.items() if k in ids})


def accept_capacity(stack: Stack, db: Any, http: Http, mix: MoneyMix, pop: Population, *, threads: int,
                    seconds: float, warmup: float, batch_max: int, spy: Any = None,
                    linger_ms: float = 0.0) -> dict[str, Any]:
    """Accepted money requests/s over HTTP with the ledger workers stopped, and store operations per request.

    With nobody settling, the store serves the accept path alone: ``threads`` clients
    post bench-mix requests (fresh ``Idempotency-Key`` each) back to back. The store's
    ``top`` counters (per collection, per command, server side) before and after give
    the writes and reads each accepted request cost, whatever process sent them.
    A second, shorter run sends the same mix from 32 returning users only: the
    stored-role cache then hits, which shows the accept path's own floor. Then the
    workers come back and settle the backlog alone (settle-only ops/s).
    ``spy(seconds)`` may start a profiler of the web tier and return its collector.
    ``linger_ms`` > 0: the main run again with group commit at the door (``linger``:
    accepted/s and accept p99, and their ratios to the main run's linger 0).
    """
    wait_drained(db)
    concurrency_before = stack.worker_concurrency
    stack.stop_workers()
    try:
        collect = spy(seconds + warmup) if spy is not None else None
        main, ids = _accept_run(db, http, mix, threads, seconds, warmup)
        if collect is not None:
            collect()
        hot_mix = MoneyMix(hot_population(pop), seed=5)
        hot_mix.unlocked = mix.unlocked  # never an unlock the main mix already made
        hot, hot_ids = _accept_run(db, http, hot_mix, threads, max(2.0, seconds / 3), 0.5)
        lingered, linger_ids = _linger_run(stack, db, http, mix, threads, seconds, warmup, linger_ms) \
            if linger_ms > 0 else (None, [])
    finally:
        stack.start_workers({"SETTLE_BATCH_MAX": str(batch_max)}, concurrency=concurrency_before)
    backlog = len(ids) + len(hot_ids) + len(linger_ids)
    started = time.perf_counter()
    kick_all()
    drain = wait_drained(db, timeout=900)
    return {
        **main, "returning_users": hot, "linger": lingered, "linger_vs_off": _linger_ratios(main, lingered),
        "ops_note": "store commands per accepted request from the store's top counters (server side): every "
                    "request of the run (warm-up included) / 202s, ledger workers stopped; returning_users: "
                    "the same mix from 32 users, so the 5 s stored-role cache of each web process hits",
        "backlog_settled": backlog, "backlog_drain_s": round(drain, 1),
        "settle_only_ops_per_s": round(backlog / (time.perf_counter() - started), 1) if backlog else None,
    }


def _linger_ratios(off: dict[str, Any], on: dict[str, Any] | None) -> dict[str, float | None] | None:
    if on is None:
        return None
    p99_off, p99_on = off["accept_ms"]["p99"], on["accept_ms"]["p99"]
    return {"accepted_per_s": round(on["accepted_per_s"] / off["accepted_per_s"], 2) if off["accepted_per_s"] else None,
            "accept_p99": round(p99_on / p99_off, 2) if p99_on and p99_off else None}


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

    t0 = open_loop(send, rate, count, start_in=0.2)
    offered = count / (time.perf_counter() - t0)
    counts = wait_settled(db, job_ids, timeout=300, kick=kick_all)
    settle_ms: list[float] = []
    codes: Counter[str] = Counter()
    for job in job_statuses(db, job_ids).values():
        if job.get("settledAt") and job.get("createdAt"):
            settle_ms.append((job["settledAt"] - job["createdAt"]).total_seconds() * 1000)
        if job["status"] == "failed":
            codes[(job.get("error") or {}).get("code", "?")] += 1
    errors = sum(n for s, n in statuses.items() if s != 202)
    return {"rate": rate, "offered_per_s": round(offered, 1), "requests": count, "statuses": dict(statuses),
            "errors": errors, "accept_ms": percentiles(accept_ms), "settle_ms": percentiles(settle_ms),
            "dispatch_lag_ms": percentiles(lag_ms), "jobs": counts, "business_failures": dict(codes),
            "settle_measure": "settledAt - createdAt of each job document (ms precision)"}


def unlock_burst(db: Any, http: Http, pop: Population, mix: MoneyMix, n: int) -> dict[str, Any]:
    """``n`` different fans unlock one new piece of content at the same moment.

    "Settled" is the job's ``settledAt``. The creator's share of a fan's unlock is
    booked at once when the fan's partition owns the creator's wallet, otherwise as a
    deferred credit that the creator's partition applies in its next batch: the stage
    also reports when the last of those was applied (``appliedAt``).
    """
    from infra.config import get_settings
    from ledger.operations import partition_of
    from ledger.timeutil import utcnow

    partitions = get_settings().ledger_partitions
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
    started_at = datetime.fromtimestamp(first - 1, UTC)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    last_accept = max((a for a, _ in accepted), default=time.time())
    ids = [j for _, j in accepted]
    counts = wait_settled(db, ids, timeout=120, kick=kick_all)
    jobs = job_statuses(db, ids)
    settled_at = [j["settledAt"].timestamp() for j in jobs.values() if j.get("settledAt")]
    latest = max(settled_at, default=last_accept)

    # When the creator could spend it: local shares at their job's settledAt, the rest when applied.
    wait_drained(db, timeout=120)
    home = partition_of(creator.id, partitions)
    local = [doc["settledAt"].timestamp() for start in range(0, len(ids), 50)
             for doc in db.jobs.find({"_id": {"$in": ids[start:start + 50]}}, {"partition": 1, "settledAt": 1})
             if doc.get("settledAt") and doc.get("partition") == home]
    applied: list[float] = []
    for credit in db.credits.find({"to": home, "applied": True, "createdAt": {"$gte": started_at}},
                                  {"amounts": 1, "appliedAt": 1}):
        if any(row["walletId"] == creator.id for row in credit["amounts"]) and credit.get("appliedAt"):
            applied.append(credit["appliedAt"].timestamp())
    creator_done = max(local + applied, default=latest)
    return {"requests": len(fans), "statuses": dict(statuses), "jobs": counts,
            "accept_window_s": round(last_accept - first, 3),
            "settled_within_s": round(max(0.0, latest - last_accept), 3),
            "creator_credited_within_s": round(max(0.0, creator_done - last_accept), 3),
            "creator_partition": home, "creator_shares_booked_locally": len(local),
            "creator_credit_documents": len(applied),
            "note": "all fans unlock one content of one creator; settled = every job's settledAt; creator "
                    "credited = the last deferred credit to the creator applied (appliedAt), or the local "
                    "job's settledAt when the fan's partition owns the creator's wallet"}

