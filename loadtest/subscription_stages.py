"""Subscriptions: expiry against the store's floor for the same update, renewals against the bench mix.

Expiry: ``count`` due non-renewing subscriptions. The floor is the store doing the
very update the tick does (the same conditional ``update_many`` filter and ``$set``,
on the same collection with its indexes), timed in this run in the order floor,
tick, tick, floor (the documents are put back to ``active`` between, untimed); the
tick is ``services.subscriptions.tick``. Target: tick <= 1.5 x floor.

Renewals: ``count`` due renewing subscriptions; one tick submits their renewal jobs,
the workers settle them. Renewals/s = settled renewals / seconds from the tick's
start to the last one settled. Target: >= 0.8 x the bench mix's settled ops/s.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

from loadtest.common import kick_all, log, ratio, wait_drained
from loadtest.seed import Population, job_statuses, wait_settled
from loadtest.stack import Stack


def _insert_due(db: Any, pop: Population, count: int, auto_renew: bool, tag: str) -> list[dict[str, Any]]:
    from ledger.timeutil import to_ms, utcnow

    subscribers = [u for u in pop.payers if u.role != "creator"]
    creators = pop.creators
    now = utcnow()
    docs = []
    for i in range(count):
        sub = subscribers[i % len(subscribers)]
        creator = creators[(i // len(subscribers) + (0 if auto_renew else 1)) % len(creators)]
        expires = to_ms(now - timedelta(minutes=5) - timedelta(milliseconds=i))
        docs.append({"_id": uuid.uuid4().hex[:24], "subscriberId": sub.id, "creatorId": creator.id,
                     "price": pop.plans[creator.id], "periodDays": 30, "status": "active",
                     "autoRenew": auto_renew, "startedAt": expires - timedelta(days=30), "expiresAt": expires,
                     "renewals": 0, "jobId": None, "createdAt": now, "seeded": tag})
    for start in range(0, len(docs), 1000):
        db.subscriptions.insert_many(docs[start:start + 1000], ordered=False)
    return docs


def _store_expiry(db: Any) -> tuple[float, int]:
    """The tick's expiry update, issued directly: ``(seconds, documents modified)``.

    Same filter and update as ``services.subscriptions.expire_lapsed`` (its exclusive
    millisecond bound included), so the only difference left is the tick itself.
    """
    from ledger.timeutil import to_ms, utcnow

    now = to_ms(utcnow())
    started = time.perf_counter()
    res = db.subscriptions.update_many(
        {"status": "active", "autoRenew": False, "expiresAt": {"$lt": now + timedelta(milliseconds=1)}},
        {"$set": {"status": "expired", "endedReason": "NOT_RENEWED", "endedAt": now}})
    return time.perf_counter() - started, res.modified_count


def _reactivate(db: Any, tag: str) -> int:
    res = db.subscriptions.update_many({"seeded": tag, "status": "expired"},
                                       {"$set": {"status": "active"}, "$unset": {"endedReason": "", "endedAt": ""}})
    return res.modified_count


def subscription_figures(db: Any, pop: Population, count: int, mix_ops_per_s: float | None,
                         stack: Stack | None = None) -> dict[str, Any]:
    from infra.config import get_settings
    from services.subscriptions import renewal_job_id, renewal_key, tick
    from tasks.settle import ring

    settings = get_settings()
    tag = f"bench-expiry-{uuid.uuid4().hex[:6]}"
    _insert_due(db, pop, count, auto_renew=False, tag=tag)
    floors: list[float] = []
    ticks: list[float] = []
    expired_by_tick = 0
    # ABBA: floor, tick, tick, floor; the documents are put back to active (untimed) in between.
    for step, what in enumerate(("floor", "tick", "tick", "floor")):
        if step:
            _reactivate(db, tag)
        if what == "floor":
            seconds, modified = _store_expiry(db)
            floors.append(seconds)
        else:
            started = time.perf_counter()
            res = tick(db, chunk=settings.subscription_chunk, partitions=settings.ledger_partitions, ring=ring)
            ticks.append(time.perf_counter() - started)
            expired_by_tick = res.expired
    floor_s, tick_s = sum(floors) / len(floors), sum(ticks) / len(ticks)
    log(f"subscriptions: expiry tick {[round(t, 2) for t in ticks]} s, store floor {[round(f, 2) for f in floors]} s")
    expired = {"count": count, "expired": expired_by_tick, "tick_s": round(tick_s, 2), "floor_s": round(floor_s, 2),
               "tick_runs_s": [round(t, 2) for t in ticks], "floor_runs_s": [round(f, 2) for f in floors],
               "per_s": round(expired_by_tick / tick_s, 1) if tick_s else None,
               "vs_floor": ratio(tick_s, floor_s, 2),
               "floor": "the tick's conditional update_many issued directly on the same collection; "
                        "floor, tick, tick, floor (means compared)"}

    wait_drained(db)
    docs = _insert_due(db, pop, count, auto_renew=True, tag="bench-renewal")
    metrics0 = stack.worker_metrics() if stack is not None else {}
    hist0 = stack.worker_histogram() if stack is not None else {}
    started, started_wall = time.perf_counter(), time.time()
    res = tick(db, chunk=settings.subscription_chunk, partitions=settings.ledger_partitions, ring=ring)
    tick_s = time.perf_counter() - started
    job_ids = [renewal_job_id(renewal_key(d["_id"], d["expiresAt"])) for d in docs]
    counts = wait_settled(db, job_ids, timeout=1800, kick=kick_all)
    waited_s = time.perf_counter() - started
    settled_at = sorted(j["settledAt"].timestamp() for j in job_statuses(db, job_ids).values()
                        if j.get("settledAt"))
    all_s = settled_at[-1] - started_wall if settled_at else waited_s
    settled = counts.get("settled", 0)
    workers: dict[str, Any] = {}
    if stack is not None:
        from loadtest.scale_stages import _histogram_delta

        delta = {k: v - metrics0.get(k, 0.0) for k, v in stack.worker_metrics().items()}
        batches = delta.get("batches", 0.0)
        workers = {"concurrency": stack.worker_concurrency, "batches": int(batches),
                   "conflict_retries": int(delta.get("conflict_retries", 0.0)),
                   "mean_batch_size": round(delta.get("jobs", 0.0) / batches, 1) if batches else None,
                   "mean_batch_ms": round(1000 * delta.get("batch_seconds", 0.0) / batches, 1) if batches else None,
                   "batch_size_histogram": _histogram_delta(hist0, stack.worker_histogram())}
    rate = round(settled / all_s, 1) if all_s else None
    renewed = {"count": count, "submitted": res.renewals_submitted, "tick_s": round(tick_s, 2),
               "all_settled_s": round(all_s, 2), "waited_s": round(waited_s, 2), "jobs": counts, "renewals_per_s": rate,
               "settle_span_s": round(settled_at[-1] - settled_at[0], 2) if len(settled_at) > 1 else None,
               "mix_ops_per_s": mix_ops_per_s, "vs_mix": ratio(rate, mix_ops_per_s, 2), "workers": workers,
               "measure": "settled renewals / seconds from the tick's start to the last settledAt"}
    return {"without_renewal": expired, "with_renewal": renewed}
