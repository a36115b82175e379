"""Bench stages of issue 22: a backlog drained without idle partitions, and overload pushed back.

``drain``: the workers stop, a backlog of transfers is queued directly (several
batches per partition, more partitions than ledger processes), each partition is
rung once, the workers start. Reported: the drain's overall rate against the rate of
its first second (a stall shows as a ratio well under 1), settled jobs per second,
the longest stretch during which a process sat idle while a partition with queued
jobs had no task (from the worker's own log, ``loadtest/timeline.py``), and the
longest stretch with no commit at all.

``live_stream``: many fans gift ONE creator over HTTP, offered open-loop at twice what
settlement sustains under that load (measured first, in the same run). Reported:
offered, accepted, shed (503 BACKLOG_FULL) and settled per second, the overload
factor (offered ÷ settled), and the settle latency of the accepted gifts against ``BACKLOG_MAX_SECONDS`` plus one batch.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from typing import Any

from loadtest import timeline
from loadtest.common import MoneyMix, closed_loop, open_loop, percentiles, queue_direct, ratio, wait_drained
from loadtest.seed import Population, job_statuses, wait_settled
from loadtest.stack import Stack


def drain(stack: Stack, db: Any, mix: MoneyMix, *, jobs: int, env: dict[str, str]) -> dict[str, Any]:
    """Queue ``jobs`` transfers with the workers stopped, ring each partition once, start them, measure."""
    from infra.config import get_settings
    from tasks.settle import force_ring

    partitions = get_settings().ledger_partitions
    wait_drained(db)
    stack.stop_workers()
    ids = queue_direct(db, mix, jobs, partitions, kinds=("transfer",))
    for p in range(partitions):
        force_ring(p, None)
    started = time.time()
    stack.start_workers(env)
    wait_drained(db, kick=None)  # no sweeper here: the doorbells alone must drain it
    time.sleep(0.5)  # the last task's log line follows its commit
    done = list(job_statuses(db, ids).values())
    commits = timeline.commit_times(done)
    runs = [r for r in timeline.task_runs(w.log_path for w in stack.workers) if r.end >= started]
    return _drain_figures(done, commits, runs, stack.worker_concurrency * len(stack.workers), partitions)


def _drain_figures(done: list[dict[str, Any]], commits: dict[int, list[float]], runs: list[timeline.Run],
                   processes: int, partitions: int) -> dict[str, Any]:
    times = sorted(t.timestamp() for t in (j.get("settledAt") for j in done) if t is not None)
    per_second = timeline.per_second(times)
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    overall = len(times) / span if span > 0 else None
    all_commits = sorted(t for ts in commits.values() for t in ts)
    finished = {p: ts[-1] for p, ts in commits.items()}
    batch = timeline.batch_time(commits, runs)
    idle = timeline.idle_with_work(runs, finished, processes, all_commits[0], all_commits[-1]) if all_commits else None
    return {
        "jobs": len(done), "partitions": partitions, "processes": processes,
        "statuses": dict(Counter(j["status"] for j in done)),
        "seconds": round(span, 2), "settled_per_s": round(overall, 1) if overall else None,
        "first_second": per_second[0] if per_second else None,
        "vs_first_second": ratio(overall, per_second[0] if per_second else None),
        "per_second": per_second,
        "first_commit_s_by_partition": {p: round(ts[0] - all_commits[0], 2) for p, ts in sorted(commits.items())},
        "longest_gap_without_commit_s": round(max((b - a for a, b in itertools.pairwise(all_commits)), default=0.0), 3),
        "batch_s": round(batch, 3), "idle_gap_s": idle, "idle_gap_vs_batch": ratio(idle, batch),
        "tasks": len(runs),
    }


def live_stream(stack: Stack, db: Any, http: Any, pop: Population, *, seconds: float, clients: int,
                env: dict[str, str], fans: int = 120, calibrate: float = 6.0, pool: int = 1,
                batch: int = 20) -> dict[str, Any]:
    """Many fans gift one creator at twice what settlement sustains; every accepted gift must settle.

    The ledger worker runs ``pool`` processes with batches of ``batch`` jobs for this
    stage: on one 2-core machine the HTTP tier shares the cores with settlement, and
    only a deliberately small settler lets it offer twice what settlement sustains (the
    overload behaviour is the point here, not the settler's throughput). What settlement
    sustains under this very load is measured first: ``clients`` closed-loop clients for ``calibrate`` seconds, gifts
    settled per second. Then gifts are offered open-loop at twice that for ``seconds``.
    """
    default_pool = stack.worker_concurrency
    stack.restart_workers({**env, "SETTLE_BATCH_MAX": str(batch)}, concurrency=pool)
    try:
        figures = _live_stream(stack, db, http, pop, seconds, clients, fans, calibrate)
        return {"pool": pool, "batch": batch, **figures}
    finally:
        stack.restart_workers(env, concurrency=default_pool)


def _live_stream(stack: Stack, db: Any, http: Any, pop: Population, seconds: float, clients: int, fans: int,
                 calibrate: float) -> dict[str, Any]:
    from infra.config import get_settings

    settings = get_settings()
    creator = pop.creators[0]
    senders = itertools.cycle([u for u in pop.payers if u.id != creator.id][:fans])
    wait_drained(db)
    probe = _offer_gifts(http, senders, creator.id, calibrate, clients=clients)
    wait_drained(db)
    sustained = _settled_in_window(db, probe)
    rate = max(20.0, 2 * sustained)
    before = stack.worker_metrics()
    outcome = _offer_gifts(http, senders, creator.id, seconds, rate=rate)
    seen = _published_loads(settings)
    counts = wait_settled(db, outcome["job_ids"], timeout=600)
    after = stack.worker_metrics()
    jobs = list(job_statuses(db, outcome["job_ids"]).values())
    latency = [(j["settledAt"] - j["createdAt"]).total_seconds() for j in jobs if j.get("settledAt")]
    batches = after.get("batches", 0.0) - before.get("batches", 0.0)
    batch_s = (after.get("batch_seconds", 0.0) - before.get("batch_seconds", 0.0)) / batches if batches else 0.0
    bound = settings.backlog_max_seconds + batch_s
    elapsed = outcome["end"] - outcome["start"]
    settled_per_s = _settled_in_window(db, outcome)
    p = percentiles(latency)
    return {
        "seconds": round(elapsed, 1), "fans": fans, "creator": creator.id,
        "sustained_per_s": round(sustained, 1), "target_offer_per_s": round(rate, 1),
        "statuses": outcome["statuses"], "jobs": counts,
        "offered_per_s": round(outcome["attempts"] / elapsed, 1),
        "accepted_per_s": round(len(outcome["job_ids"]) / elapsed, 1),
        "shed": outcome["statuses"].get(503, 0), "shed_per_s": round(outcome["statuses"].get(503, 0) / elapsed, 1),
        "settled_per_s": round(settled_per_s, 1),
        "overload": ratio(outcome["attempts"] / elapsed, settled_per_s),
        "settle_s": p, "backlog_max_seconds": settings.backlog_max_seconds, "mean_batch_s": round(batch_s, 3),
        "settle_p99_bound_s": round(bound, 2), "settle_p99_vs_bound": ratio(p.get("p99"), bound),
        "unsettled": len(outcome["job_ids"]) - counts.get("settled", 0) - counts.get("failed", 0),
        "calibration": {k: v for k, v in probe.items() if k != "job_ids"},
        "published_at_end": seen,
    }


def _published_loads(settings: Any) -> dict[str, dict[str, float]]:
    """What the web's gate read at the end of the offer: each partition's queued, rate and limit."""
    from infra import backlog
    from infra.redis_client import get_redis

    limits = backlog.limits(settings)
    return {str(p): {"queued": load.queued, "rate": round(load.rate, 1), "limit": limits.jobs(load),
                     "age_s": round(time.time() - load.at, 2)}
            for p, load in sorted(backlog.read_all(get_redis()).items())}


def _settled_in_window(db: Any, outcome: dict[str, Any]) -> float:
    """Gifts of ``outcome`` settled per second inside its window."""
    jobs = job_statuses(db, outcome["job_ids"]).values()
    inside = sum(1 for j in jobs if j.get("settledAt") and j["settledAt"].timestamp() <= outcome["end"])
    return inside / (outcome["end"] - outcome["start"])


def _offer_gifts(http: Any, senders: Any, creator_id: str, seconds: float, *, clients: int = 0,
                 rate: float | None = None) -> dict[str, Any]:
    """Gifts of 5 coins to ``creator_id``: ``clients`` closed-loop clients, or open-loop at ``rate``/s."""
    statuses: Counter[int] = Counter()
    job_ids: list[str] = []
    lock = threading.Lock()

    def send() -> None:
        with lock:
            fan = next(senders)
        status, data = http.post_money(fan, "/api/gifts", {"creatorId": creator_id, "amount": 5})
        with lock:
            statuses[status] += 1
            if status == 202 and data:
                job_ids.append(data["jobId"])

    start = time.time()
    if rate is None:
        closed_loop(lambda: send() or True, clients, seconds)
    else:
        open_loop(lambda _scheduled: send(), rate, int(rate * seconds))
    end = time.time()
    return {"start": start, "end": end, "statuses": dict(statuses), "job_ids": job_ids,
            "attempts": sum(statuses.values())}
