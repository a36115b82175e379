"""``make bench``: Purser's throughput and latency beside the ceilings of its own parts.

``python -m loadtest.bench [--worker-concurrency N] [--duration 60] [--rate 50] [--quick]``

Starts an isolated stack (fresh SecantusDB and Redis in a temporary directory on
free ports, gunicorn, Celery workers consuming every queue, rate limits off), seeds
users of every tier with contents and plans, funds every wallet through the real
settlement path, then measures in one run (the stage modules say how):

1. the store alone (``scale_stages``): ``update_one``/``insert_one``/``find_one`` per
   second, and batch transactions on disjoint documents from 4 client threads vs 1;
2. the queue ceiling: empty Celery tasks/s through the same Redis and workers;
3. settled ops/s of the bench mix (transfers, unlocks, gifts) at saturation with
   ``SETTLE_BATCH_MAX=1``, then with 1 and with 4 ledger processes (alternating
   rounds), conflict retries from ``purser_settle_conflict_retries_total``;
4. the settle loop in this process on a counted client: documents written per
   settled job, per-stage times from ``BatchResult.stages``, 4 settler threads vs 1;
5. the accept path over HTTP (``http_stages``): accepted requests/s with the workers
   stopped and store operations per request (the store's ``top`` counters);
6. end to end over HTTP: Purser (accept + settle) vs a synchronous one-transaction-
   per-request app (``sync_baseline``) on the same store, transfers/s; then the hot
   creator (``hot_stages``): 100+ fans gift one creator, both designs ABBA, gifts settled/s;
7. a fixed offered load (50 requests/s): accept and settle percentiles;
8. 200 fans unlocking one new content at once: settled (and creator credited) when;
9. subscriptions (``subscription_stages``): expiry vs the store's floor for the same
   update, renewals/s vs the bench mix;
10. money over time (``history_bench``): balance-as-of and a statement for a creator with
    1,000 / 10,000 / 100,000 ledger entries (10,000 with ``--quick``), in databases of their own;
11. peak RSS of web and worker processes; the money invariants at the end.

It prints a table with issue 18's targets (PASS/MISS) and writes
``loadtest/results/<date>.json``. The exit status is 1 when an invariant is broken
(or a stage crashed), 0 otherwise, whether or not targets are met.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from loadtest import (
    backlog_stages,
    history_bench,
    hot_stages,
    http_stages,
    scale_stages,
    subscription_stages,
    sync_baseline,
)
from loadtest.common import CpuMeter, Http, MoneyMix, dig, kick_all, log, ratio, wait_drained
from loadtest.plan import BENCH, RESULTS, Plan
from loadtest.profiling import pyspy_start, summarize_collapsed
from loadtest.seed import fund, seed_population
from loadtest.stack import ROOT, MemorySampler, Stack, StackOptions, wait_for

PROFILES = ROOT / "var" / "bench"  # raw profiles: large, not for the repository
DEFAULT_BATCH = 200  # infra.config default of SETTLE_BATCH_MAX
DEFAULT_WORKER_CONCURRENCY = 4  # the Procfile's WORKER_CONCURRENCY default

# (key, label, comparison, target): issue 18's targets, ratios measured in the same run.
TARGETS: list[tuple[str, str, str, float]] = [
    ("concurrency.vs_store", "4/1 ledger processes ÷ store's 4/1 threads", ">=", 0.9),
    ("concurrency.c4.conflict_retries", "conflict retries, 4 ledger processes", "<=", 0.0),
    ("efficiency", "settled ops/s ÷ store update_one/s", ">=", 0.30),
    ("settle_profile.documents_per_settled_job", "documents written per settled job", "<=", 3.0),
    ("accept.writes_per_request", "store writes per accepted request", "<=", 2.0),
    ("accept.reads_per_request", "store reads per accepted request", "<=", 1.0),
    # issue 24: a returning user's request to a known receiver reads nothing; one transfer
    # end to end (accept + settle, counted on the wire) writes no more than the synchronous design
    ("accept.returning_users.reads_per_request", "store reads per accepted request, returning users", "<=", 0.1),
    ("settle_profile.transfers_end_to_end.documents_per_transfer",
     "documents written per transfer end to end (accept + settle)", "<=", 3.0),
    ("fixed_load.accept_ms.p99", "accept p99 ms @ fixed load", "<=", 50.0),
    ("fixed_load.settle_ms.p99", "settle p99 ms @ fixed load", "<=", 500.0),
    ("fixed_load.errors", "errors @ fixed load (non-business)", "<=", 0.0),
    ("end_to_end.ratio", "Purser ÷ synchronous transfers/s", ">=", 4.0),
    # issue 24: both designs again with the journal synced at every commit (durable acks)
    ("end_to_end_synced.ratio", "Purser ÷ synchronous transfers/s, journal synced per commit", ">=", 1.0),
    # issue 24: 100+ fans gift one creator, both designs ABBA
    ("hot.ratio", "hot creator: Purser ÷ synchronous gifts settled/s", ">=", 4.0),
    ("hot.purser_settle_p99_s", "hot creator: Purser settle p99, s", "<=", 1.0),
    ("unlock_burst.settled_within_s", "200 unlocks settled after last 202, s", "<=", 1.0),
    ("subscriptions.without_renewal.vs_floor", "expiry tick ÷ store floor", "<=", 1.5),
    ("subscriptions.with_renewal.vs_mix", "renewals/s ÷ bench mix ops/s", ">=", 0.8),
    # issue 22: no idle partition under a backlog, bounded latency under overload
    ("drain.vs_first_second", "backlog drain rate ÷ its first second", ">=", 0.9),
    ("drain.idle_gap_vs_batch", "longest idle process with work waiting ÷ one batch", "<=", 1.0),
    ("live_stream.overload", "live stream: offered ÷ settled gifts/s", ">=", 2.0),
    ("live_stream.settle_p99_vs_bound", "live stream settle p99 ÷ (BACKLOG_MAX_SECONDS + batch)", "<=", 1.0),
    ("live_stream.unsettled", "live stream: accepted gifts not settled", "<=", 0.0),
    # issue 25: money over time costs the same whatever the history's length
    ("history.ratio_longest_to_shortest.as_of_month_end.documents_read",
     "balance-as-of documents read, longest ÷ shortest history", "<=", 1.0),
    ("history.ratio_longest_to_shortest.statement.documents_read",
     "statement documents read, longest ÷ shortest history", "<=", 1.0),
]

LEVELS = (1, 2, 4)  # ledger processes (and store client threads) compared
STAGES = ("store", "queue", "batch1", "concurrency", "profile", "accept", "e2e", "synced", "hot", "fixed", "burst",
          "subscriptions",
          "drain", "live", "history")


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


def queue_ceiling(stack: Stack, tasks: int) -> dict[str, Any]:
    """Empty tasks/s: fill a queue the workers do not consume yet, then let them drain it."""
    from infra.redis_client import get_redis
    from tasks.bench import noop
    from workers.celery_app import app

    queue = f"bench.noop.{uuid.uuid4().hex[:6]}"
    redis = get_redis()
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
            "consumers_added": len(replies or []), "concurrency": stack.worker_concurrency}


# run_locust imports these two names.
_kick_all = kick_all


def check_invariants(db: Any) -> dict[str, Any]:
    from tests.support.invariants import assert_money_invariants

    drain = wait_drained(db)
    started = time.perf_counter()
    try:
        figures = assert_money_invariants(db)
    except AssertionError as exc:
        return {"ok": False, "error": str(exc)[:2000], "drain_s": round(drain, 1)}
    return {"ok": True, **figures, "check_s": round(time.perf_counter() - started, 1), "drain_s": round(drain, 1)}


def _spy(results: dict[str, Any], stamp: str, name: str, pid: int | None, *, subprocesses: bool,
         gil: bool) -> Callable[[float], Callable[[], None]]:
    """A py-spy starter: ``start(seconds)`` records ``pid`` and returns the collector of its summary."""

    def start(seconds: float) -> Callable[[], None]:
        path = PROFILES / f"{stamp}-pyspy-{name}.txt"
        proc = pyspy_start(pid or 0, seconds, path, subprocesses=subprocesses, gil=gil)

        def collect() -> None:
            if proc is None:
                return
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
            results.setdefault("profile", {})[f"pyspy_{name}"] = {"file": str(path), **summarize_collapsed(path)}

        return collect

    return start


def _pyspy_hook(stack: Stack, results: dict[str, Any], stamp: str, seconds: float) -> Callable[[int, int], Any]:
    """py-spy the store (GIL holder) and the workers during the first saturation run with 1 process."""

    def hook(level: int, round_: int) -> Callable[[], None] | None:
        if level != 1 or round_ != 0:
            return None
        collectors = [_spy(results, stamp, "mongodb", stack.mongo.pid, subprocesses=False, gil=True)(seconds),
                      _spy(results, stamp, "worker", stack.workers[0].pid, subprocesses=True, gil=False)(seconds)]

        def collect() -> None:
            for c in collectors:
                c()

        return collect

    return hook


# ------------------------------------------------------------------------------- report


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, label, op, target in TARGETS:
        value = dig(results, key)
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
    verdicts = {row["key"]: row for row in r.get("targets", [])}

    def add(label: str, key: str) -> None:
        rows.append((label, dig(r, key), "", ""))

    def target(key: str) -> None:
        row = verdicts.get(key)
        if row:
            rows.append((row["label"], row["value"], row["target"], row["verdict"]))

    add("store: update_one/s (1 client)", "store.update_one_per_s")
    add("store: insert_one/s (1 client)", "store.insert_one_per_s")
    add("store: find_one/s (1 client)", "store.find_one_per_s")
    add("store: txn ms/doc insert 0/2/4 idx, update", "store.txn_summary")
    add("store: batch txn docs/s, 1 / 2 / 4 threads", "store_parallel.summary")
    add("store: 2 ÷ 1 threads; 4 ÷ 1 threads", "store_parallel.ratio_summary")
    add("queue: empty Celery tasks/s", "queue.tasks_per_s")
    add("settled ops/s, SETTLE_BATCH_MAX=1 (1 process)", "saturation.batch1.ops_per_s")
    add("settled ops/s, 1 ledger process", "concurrency.c1.ops_per_s")
    add("settled ops/s, 2 ledger processes", "concurrency.c2.ops_per_s")
    add("settled ops/s, 4 ledger processes", "concurrency.c4.ops_per_s")
    add("  mean batch size, 1 / 2 / 4 processes", "concurrency.batch_summary")
    add("  conflict retries, 1 / 2 processes", "concurrency.retries_summary")
    target("concurrency.c4.conflict_retries")
    add("Purser 2 ÷ 1; 4 ÷ 1 processes", "concurrency.ratio_summary")
    target("concurrency.vs_store")
    add("bench mix ops/s at the default pool", "mix_ops_per_s")
    target("efficiency")
    add("in-process settle ops/s, 1 / 4 threads", "settle_profile.summary")
    add("  4 ÷ 1 settler threads; retries (4)", "settle_profile.ratio_summary")
    target("settle_profile.documents_per_settled_job")
    add("  store reads per settled job", "settle_profile.t1.reads_per_settled_job")
    target("settle_profile.transfers_end_to_end.documents_per_transfer")
    add("  transfers only: accept / settle documents per transfer",
        "settle_profile.transfers_end_to_end.split_summary")
    add("accepted requests/s over HTTP (no settling)", "accept.accepted_per_s")
    add("  ÷ store update_one/s", "accept.vs_update_ceiling")
    target("accept.writes_per_request")
    target("accept.reads_per_request")
    add("  returning users: req/s; writes, reads per req", "accept.returning_users.summary")
    target("accept.returning_users.reads_per_request")
    add("  backlog then settled alone, ops/s", "accept.settle_only_ops_per_s")
    add("  accept p50 / p99 ms, linger 0", "accept.accept_ms.p50_p99")
    add("  group commit: linger ms; req/s; p50 / p99 ms", "accept.linger.summary")
    add("  group commit ÷ linger 0: req/s; p99", "accept.linger_vs_off.summary")
    add("end to end transfers/s: Purser", "end_to_end.purser_transfers_per_s")
    add("end to end transfers/s: synchronous", "end_to_end.baseline_transfers_per_s")
    add("  store CPU ms per transfer: Purser / synchronous", "end_to_end.store_summary")
    target("end_to_end.ratio")
    add("end to end, synced commits, transfers/s: Purser", "end_to_end_synced.purser_transfers_per_s")
    add("end to end, synced commits, transfers/s: synchronous", "end_to_end_synced.baseline_transfers_per_s")
    target("end_to_end_synced.ratio")
    add("hot creator gifts settled/s: Purser / synchronous", "hot.summary")
    target("hot.ratio")
    add("  saturated: Purser settle p50 / p99 s; synchronous request p99 ms", "hot.latency_summary")
    add("  keeping up: offered / settled gifts/s; settle p50 s", "hot.keeping_up_summary")
    target("hot.purser_settle_p99_s")
    add("fixed load: offered req/s", "fixed_load.offered_per_s")
    add("fixed load: accept p50 / p95 ms", "fixed_load.accept_ms.p50_p95")
    target("fixed_load.accept_ms.p99")
    add("fixed load: settle p50 / p95 ms", "fixed_load.settle_ms.p50_p95")
    target("fixed_load.settle_ms.p99")
    target("fixed_load.errors")
    target("unlock_burst.settled_within_s")
    add("  creator's credits applied after last 202, s", "unlock_burst.creator_credited_within_s")
    add("subscriptions: expire N, tick / floor s", "subscriptions.without_renewal.summary")
    target("subscriptions.without_renewal.vs_floor")
    add("subscriptions: renew N, tick / all settled s", "subscriptions.with_renewal.summary")
    add("  renewals/s", "subscriptions.with_renewal.renewals_per_s")
    target("subscriptions.with_renewal.vs_mix")
    add("drain: jobs, s, settled/s", "drain.summary")
    target("drain.vs_first_second")
    add("  longest stretch without a commit, s", "drain.longest_gap_without_commit_s")
    target("drain.idle_gap_vs_batch")
    add("live stream: offered / accepted / shed / settled per s", "live_stream.summary")
    target("live_stream.overload")
    add("  settle p50 / p99 s", "live_stream.settle_summary")
    target("live_stream.settle_p99_vs_bound")
    target("live_stream.unsettled")
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
    cost = dig(results, "store.txn_insert_ms_per_doc_by_secondary_indexes")
    if isinstance(cost, dict):
        results["store"]["txn_summary"] = " / ".join(f"{cost.get(k, 0):.2f}" for k in ("0", "2", "4")) + \
            f", {cost.get('update_0', 0):.2f}"
    par = results.get("store_parallel")
    if isinstance(par, dict):
        rates = par.get("docs_per_s", {})
        par["summary"] = " / ".join(_fmt(rates.get(str(n))) for n in LEVELS)
        par["ratio_summary"] = f"{_fmt(par.get('ratio_2_1'))}; {_fmt(par.get('ratio_4_1'))}"
    conc = results.get("concurrency")
    if isinstance(conc, dict):
        conc["batch_summary"] = " / ".join(_fmt(dig(conc, f"c{n}.mean_batch_size")) for n in LEVELS)
        conc["retries_summary"] = f"{_fmt(dig(conc, 'c1.conflict_retries'))} / {_fmt(dig(conc, 'c2.conflict_retries'))}"
        conc["ratio_summary"] = f"{_fmt(conc.get('ratio_2_1'))}; {_fmt(conc.get('ratio_4_1'))}"
    hot = dig(results, "accept.returning_users")
    if isinstance(hot, dict):
        hot["summary"] = f"{_fmt(hot.get('accepted_per_s'))}; {_fmt(hot.get('writes_per_request'))}, " \
                         f"{_fmt(hot.get('reads_per_request'))}"
    for path in ("accept.accept_ms", "accept.linger.accept_ms"):
        p = dig(results, path)
        if isinstance(p, dict):
            p["p50_p99"] = f"{_fmt(p.get('p50'))} / {_fmt(p.get('p99'))}"
    lingered = dig(results, "accept.linger")
    if isinstance(lingered, dict):
        lingered["summary"] = f"{_fmt(lingered.get('linger_ms'))}; {_fmt(lingered.get('accepted_per_s'))}; " \
                              f"{_fmt(dig(lingered, 'accept_ms.p50_p99'))} (mean batch " \
                              f"{_fmt(dig(lingered, 'batches.mean_size'))})"
    versus = dig(results, "accept.linger_vs_off")
    if isinstance(versus, dict):
        versus["summary"] = f"{_fmt(versus.get('accepted_per_s'))}; {_fmt(versus.get('accept_p99'))}"
    prof = results.get("settle_profile")
    if isinstance(prof, dict):
        prof["summary"] = f"{_fmt(dig(prof, 't1.ops_per_s'))} / {_fmt(dig(prof, 't4.ops_per_s'))}"
        prof["ratio_summary"] = f"{_fmt(prof.get('ratio_4_1'))}; {_fmt(dig(prof, 't4.retries'))}"
        transfers = prof.get("transfers_end_to_end")
        if isinstance(transfers, dict):
            transfers["split_summary"] = f"{_fmt(transfers.get('accept_documents_per_transfer'))} / " \
                                         f"{_fmt(transfers.get('settle_documents_per_transfer'))}"
    drained = results.get("drain")
    if isinstance(drained, dict):
        drained["summary"] = f"{_fmt(drained.get('jobs'))}, {_fmt(drained.get('seconds'))}, " \
                             f"{_fmt(drained.get('settled_per_s'))}"
    live = results.get("live_stream")
    if isinstance(live, dict):
        live["summary"] = " / ".join(_fmt(live.get(k)) for k in
                                     ("offered_per_s", "accepted_per_s", "shed_per_s", "settled_per_s"))
        live["settle_summary"] = f"{_fmt(dig(live, 'settle_s.p50'))} / {_fmt(dig(live, 'settle_s.p99'))}"
    for key in ("end_to_end", "end_to_end_synced"):
        e2e = results.get(key)
        if isinstance(e2e, dict):
            e2e["store_summary"] = f"{_fmt(dig(e2e, 'store_cpu_ms_per_transfer.purser'))} / " \
                                   f"{_fmt(dig(e2e, 'store_cpu_ms_per_transfer.baseline'))}"
    hot = results.get("hot")
    if isinstance(hot, dict):
        hot["summary"] = f"{_fmt(hot.get('purser_settled_per_s'))} / {_fmt(hot.get('baseline_settled_per_s'))}"
        sync_p99 = [dig(r, "request_ms.p99") for r in hot.get("runs", []) if r.get("design") == "baseline"]
        hot["keeping_up_summary"] = f"{_fmt(dig(hot, 'keeping_up.offered_per_s'))} / " \
                                    f"{_fmt(dig(hot, 'keeping_up.settled_per_s'))}; " \
                                    f"{_fmt(dig(hot, 'purser_settle_s.p50'))}"
        hot["latency_summary"] = f"{_fmt(dig(hot, 'purser_settle_saturated_s.p50'))} / " \
                                 f"{_fmt(dig(hot, 'purser_settle_saturated_s.p99'))}; " + \
            " / ".join(_fmt(v) for v in sync_p99)
    for name in ("accept_ms", "settle_ms"):
        p = dig(results, f"fixed_load.{name}")
        if isinstance(p, dict):
            p["p50_p95"] = f"{_fmt(p.get('p50'))} / {_fmt(p.get('p95'))}"
    subs = results.get("subscriptions")
    if isinstance(subs, dict):
        a, b = subs.get("without_renewal", {}), subs.get("with_renewal", {})
        a["summary"] = f"{_fmt(a.get('count'))}: {_fmt(a.get('tick_s'))} / {_fmt(a.get('floor_s'))} s"
        b["summary"] = f"{_fmt(b.get('count'))}: {_fmt(b.get('tick_s'))} / {_fmt(b.get('all_settled_s'))} s"
    inv = results.get("invariants")
    if isinstance(inv, dict):
        inv["verdict"] = "hold" if inv.get("ok") else "BROKEN"


def _derive(results: dict[str, Any], default_concurrency: int) -> None:
    """Ratios between stages of this run."""
    ceiling = dig(results, "store.update_one_per_s")
    conc = results.get("concurrency")
    if isinstance(conc, dict):
        conc["vs_store"] = ratio(conc.get("ratio_4_1"), dig(results, "store_parallel.ratio_4_1"), 3)
        mix = dig(conc, f"c{default_concurrency}.ops_per_s") or dig(conc, "c1.ops_per_s")
        results["mix_ops_per_s"] = mix
        results["efficiency"] = ratio(mix, ceiling, 3)
    acc = results.get("accept")
    if isinstance(acc, dict):
        acc["vs_update_ceiling"] = ratio(acc.get("accepted_per_s"), ceiling, 3)


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
    parser.add_argument("--worker-concurrency", type=int, default=DEFAULT_WORKER_CONCURRENCY,
                        help=f"ledger processes per worker node outside the concurrency stage "
                             f"(default {DEFAULT_WORKER_CONCURRENCY}, as the Procfile)")
    parser.add_argument("--worker-nodes", type=int, default=1, help="Celery worker nodes (default 1)")
    parser.add_argument("--duration", type=float, default=None,
                        help="saturation seconds per number of ledger processes (40; 10 with --quick)")
    parser.add_argument("--quick", action="store_true", help="~10 s stages and a smaller population")
    parser.add_argument("--accept-linger-ms", type=float, default=2.0,
                        help="the accept stage runs again with this ACCEPT_LINGER_MS (group commit; 0 = not)")
    parser.add_argument("--rate", type=float, default=50.0, help="fixed offered load, requests/s (50)")
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of web and workers (INFO)")
    parser.add_argument("--batch-max", type=int, default=DEFAULT_BATCH,
                        help="SETTLE_BATCH_MAX of the workers (200, as infra.config)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the store and the workers during the first saturation run and "
                             "pyinstrument the in-process settle loop (raw files in var/bench/)")
    parser.add_argument("--skip", default="", help="comma-separated stages to skip: " + ",".join(STAGES))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (data, logs)")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (loadtest/results/<date>.json)")
    return parser.parse_args(argv)


@dataclass
class Run:
    """One bench run: its plan and options, the started stack and what the stages share."""

    plan: Plan
    args: argparse.Namespace
    options: StackOptions
    skip: set[str]
    stamp: str
    results: dict[str, Any]
    stack: Stack
    db: Any = None
    settings: Any = None
    pop: Any = None
    mix: MoneyMix | None = None
    http: Http | None = None

    @property
    def batch_env(self) -> dict[str, str]:
        return {"SETTLE_BATCH_MAX": str(self.args.batch_max)}

    def runs(self, name: str) -> bool:
        return name not in self.skip


def _plan(args: argparse.Namespace) -> tuple[Plan, set[str]]:
    """The plan of this run from the arguments, and the stages to skip."""
    plan = Plan.quick_plan() if args.quick else Plan()
    if args.duration is not None:
        plan.duration = args.duration
    plan.fixed_rate = args.rate
    plan.web_workers, plan.web_threads = args.web_workers, args.web_threads
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s) to skip: {', '.join(sorted(unknown))}; known: {', '.join(STAGES)}")
    return plan, skip


def _start(run: Run) -> MemorySampler:
    """Stores, workers and web up; this process on the stack's store; the RSS sampler started."""
    stack = run.stack
    stack.start_stores()
    log(f"stores up in {stack.tmp} (mongo :{stack.mongo.port}, redis :{stack.redis.port})")
    from infra.config import get_settings
    from infra.mongo import get_db

    run.settings = get_settings()
    run.db = get_db()
    stack.start_workers(run.batch_env)
    stack.start_web()
    assert stack.web is not None
    sampler = MemorySampler(stack).start()
    log(f"web {stack.web.base_url}, {len(stack.workers)} worker node(s) x {run.options.worker_concurrency}")
    return sampler


def _seed(run: Run) -> None:
    """Users of every tier, funded through settlement; the money mix and an HTTP client with their tokens."""
    from api.auth import issue_token
    from tasks.settle import ring

    db, results = run.db, run.results
    with stage(results, "seed"):
        started = time.perf_counter()
        pop = seed_population(db, free=run.plan.free, premium=run.plan.premium, creators=run.plan.creators)
        funding = fund(db, [u.id for u in pop.payers], 1_000_000, partitions=run.settings.ledger_partitions,
                       ring=ring, kick=kick_all)
        wait_drained(db)
        results["seed"] = {"users": len(pop.users), "by_role": dict(Counter(u.role for u in pop.users)),
                           "contents": len(pop.contents), "plans": len(pop.plans), "funded": funding,
                           "seconds": round(time.perf_counter() - started, 1)}
    # A failed seed stage leaves ``pop`` unset: the run stops here, recorded as a setup error.
    tokens = {u.id: issue_token(run.settings, u.id, u.role)[0] for u in pop.users}
    assert run.stack.web is not None
    run.pop, run.mix, run.http = pop, MoneyMix(pop), Http(run.stack.web.base_url, tokens)


def _store_and_settle_stages(run: Run) -> None:
    """Stages 1 to 4: the store alone, the queue, saturation with 1, 2, 4 ledger processes, the settle loop."""
    plan, args, results, stack, db, mix = run.plan, run.args, run.results, run.stack, run.db, run.mix
    assert mix is not None
    if run.runs("store"):
        with stage(results, "store"):
            results["store"] = scale_stages.store_ceiling(db, plan.store_seconds)
            results["store_parallel"] = scale_stages.store_parallel(
                db, plan.parallel_seconds, levels=LEVELS, rounds=plan.rounds)
    if run.runs("queue"):
        with stage(results, "queue"):
            results["queue"] = queue_ceiling(stack, plan.queue_tasks)
    if run.runs("batch1"):
        with stage(results, "saturation batch 1"):
            stack.restart_workers({"SETTLE_BATCH_MAX": "1"}, concurrency=1)
            results.setdefault("saturation", {})["batch1"] = scale_stages.saturation(
                stack, db, mix, seconds=plan.duration / 2, warmup=plan.warmup,
                submit_threads=plan.submit_threads, batch_max=1)
    if run.runs("concurrency"):
        with stage(results, "concurrency"):
            hook = _pyspy_hook(stack, results, run.stamp, min(plan.duration / plan.rounds, 30) + plan.warmup) \
                if args.profile else None
            results["concurrency"] = scale_stages.concurrency(
                stack, db, mix, levels=LEVELS, rounds=plan.rounds, seconds=plan.duration / plan.rounds,
                warmup=plan.warmup, submit_threads=plan.submit_threads, batch_max=args.batch_max,
                profile=hook)
    if not {"batch1", "concurrency"} <= run.skip:  # back to the default pool and batch size
        stack.restart_workers(run.batch_env, concurrency=run.options.worker_concurrency)
    if run.runs("profile"):
        with stage(results, "settle profile"):
            html = PROFILES / f"{run.stamp}-pyinstrument-settle.html" if args.profile else None
            results["settle_profile"] = scale_stages.settle_profile(
                stack, db, mix, jobs=plan.profile_jobs, batch_max=args.batch_max, levels=(1, 4),
                rounds=plan.rounds, profile_html=html)


def _http_stages(run: Run) -> None:
    """Stages 5 to 8 over HTTP: accept path, end to end vs synchronous, fixed load, unlock burst."""
    plan, args, results, stack, db = run.plan, run.args, run.results, run.stack, run.db
    mix, http, pop = run.mix, run.http, run.pop
    assert stack.web is not None and mix is not None and http is not None
    if run.runs("accept"):
        with stage(results, "accept path"):
            spy = _spy(results, run.stamp, "web", stack.web.pid, subprocesses=True, gil=False) \
                if args.profile else None
            results["accept"] = http_stages.accept_capacity(
                stack, db, http, mix, pop, threads=plan.client_threads, seconds=plan.accept_seconds,
                warmup=1.0, batch_max=args.batch_max, spy=spy, linger_ms=args.accept_linger_ms)
    if run.runs("e2e"):
        with stage(results, "end to end vs synchronous"):
            results["end_to_end"] = _end_to_end(run)
    if run.runs("synced"):
        with stage(results, "end to end, journal synced at every commit"):
            wait_drained(db)
            stack.restart_mongo(sync_on_commit=True)
            try:
                results["end_to_end_synced"] = _end_to_end(run)
            finally:
                wait_drained(db)
                stack.restart_mongo(sync_on_commit=False)
    if run.runs("hot"):
        with stage(results, "hot creator vs synchronous"):
            results["hot"] = hot_stages.hot_creator(
                db, purser_url=stack.web.base_url, start_baseline=lambda: sync_baseline.start_server(stack),
                threads=plan.client_threads, seconds=plan.e2e_seconds, purser_invariants=check_invariants,
                meter=lambda extra: CpuMeter(stack, extra).start(),
                spy=_hot_spy(run) if args.profile else None, settler_metrics=stack.worker_metrics)
    if run.runs("fixed"):
        with stage(results, "fixed load"):
            wait_drained(db)
            results["fixed_load"] = http_stages.fixed_load(db, http, mix, plan.fixed_rate, plan.fixed_seconds)
    if run.runs("burst"):
        with stage(results, "unlock burst"):
            wait_drained(db)
            results["unlock_burst"] = http_stages.unlock_burst(db, http, pop, mix, plan.burst)


def _hot_spy(run: Run) -> Callable[[float], Callable[[], None]]:
    """py-spy the store (GIL holder), the web tier and the workers during the hot creator's first Purser run."""
    stack = run.stack
    assert stack.web is not None
    spies = [_spy(run.results, run.stamp, "hot-mongodb", stack.mongo.pid, subprocesses=False, gil=True),
             _spy(run.results, run.stamp, "hot-web", stack.web.pid, subprocesses=True, gil=False),
             _spy(run.results, run.stamp, "hot-worker", stack.workers[0].pid, subprocesses=True, gil=False)]

    def start(seconds: float) -> Callable[[], None]:
        collectors = [s(seconds) for s in spies]

        def collect() -> None:
            for c in collectors:
                c()

        return collect

    return start


def _end_to_end(run: Run) -> dict[str, Any]:
    """Both designs, transfers over HTTP on the same store (``loadtest/sync_baseline.py``)."""
    plan = run.plan
    return sync_baseline.end_to_end(
        run.stack, run.db, run.http, run.mix, run.pop, threads=plan.client_threads, seconds=plan.e2e_seconds,
        warmup=plan.warmup, rounds=plan.rounds, cap=max(400, run.args.batch_max * run.settings.ledger_partitions),
        spy=_e2e_spy(run) if run.args.profile else None)


def _e2e_spy(run: Run) -> Callable[[str, float], Callable[[], None]]:
    """py-spy the store (GIL holder) during each design's first end-to-end round."""
    def start(design: str, seconds: float) -> Callable[[], None]:
        name = f"e2e-{design}-mongodb" + ("-synced" if "end_to_end" in run.results else "")
        return _spy(run.results, run.stamp, name, run.stack.mongo.pid, subprocesses=False, gil=True)(seconds)

    return start


def _backlog_and_subscription_stages(run: Run) -> None:
    """Issue 22's backlog drain and live stream, then subscriptions."""
    plan, results, stack, db, pop = run.plan, run.results, run.stack, run.db, run.pop
    if run.runs("drain"):
        with stage(results, "backlog drain"):
            results["drain"] = backlog_stages.drain(stack, db, MoneyMix(pop, seed=22), jobs=plan.drain_jobs,
                                                    env=run.batch_env)
    if run.runs("live"):
        with stage(results, "live stream"):
            results["live_stream"] = backlog_stages.live_stream(stack, db, run.http, pop, seconds=plan.live_seconds,
                                                                clients=plan.client_threads, env=run.batch_env)
    if run.runs("subscriptions"):
        with stage(results, "subscriptions"):
            conc = results.get("concurrency", {})
            mix_rate = dig(conc, f"c{run.options.worker_concurrency}.ops_per_s") or dig(conc, "c1.ops_per_s")
            results["subscriptions"] = subscription_stages.subscription_figures(
                db, pop, plan.subscriptions, mix_rate, stack)
    if run.runs("history"):
        with stage(results, "money over time"):  # databases of its own on the same store
            results["history"] = history_bench.run(
                stack.mongo.uri, [1_000, 10_000] if plan.quick else [1_000, 10_000, 100_000], repeat=9)


def _measure(run: Run) -> None:
    """Start the stack, run every stage not skipped and the invariants; a crash is recorded, not raised."""
    results = run.results
    sampler: MemorySampler | None = None
    try:
        sampler = _start(run)
        _seed(run)
        _store_and_settle_stages(run)
        _http_stages(run)
        _backlog_and_subscription_stages(run)
        with stage(results, "invariants"):
            results["invariants"] = check_invariants(run.db)
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
        run.stack.close()


def _report(results: dict[str, Any], out: Path, worker_concurrency: int) -> int:
    """Derive, evaluate, write and print the results; the exit status."""
    _derive(results, worker_concurrency)
    _summaries(results)
    results["targets"] = evaluate(results)
    inv_ok = dig(results, "invariants.ok")
    exit_code = 1 if inv_ok is not True or results.get("stage_errors") else 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(table(results))
    print()
    load = results["machine"]
    print(f"machine: {load['nproc']} cores, {load['cpu_model']}, {load['ram_gib']} GiB; load average "
          f"start {tuple(round(x, 2) for x in load['loadavg_start'])} end "
          f"{tuple(round(x, 2) for x in load['loadavg_end'])}; commit {load['commit']}")
    for sat in dig(results, "concurrency.runs") or []:
        print(f"saturation {sat['concurrency']} process(es): {sat['ops_per_s']} ops/s; backlog mean "
              f"{sat.get('backlog_mean')}, queued at end {sat.get('queued_at_end')}; mean batch "
              f"{sat.get('mean_batch_size')}; retries {sat.get('conflict_retries')}; CPU cores {sat.get('cpu_cores')}")
    if results.get("stage_errors"):
        print(f"stage errors: {results['stage_errors']}")
    if inv_ok is False:
        print(f"INVARIANTS BROKEN: {dig(results, 'invariants.error')}")
    print(f"results: {out}")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan, skip = _plan(args)
    stamp = datetime.now().strftime("%Y-%m-%dT%H%M%S")
    out = args.output or RESULTS / f"{stamp}{'-quick' if plan.quick else ''}.json"
    options = StackOptions(web_workers=plan.web_workers, web_threads=plan.web_threads,
                           worker_concurrency=args.worker_concurrency, worker_nodes=args.worker_nodes,
                           log_level=args.log_level, keep=args.keep)
    results: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m loadtest.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(), "plan": plan.record(BENCH), "stack": options.__dict__.copy(),
    }
    log(f"machine: {results['machine']['nproc']} cores, load average {results['machine']['loadavg_start']}")
    _measure(Run(plan, args, options, skip, stamp, results, Stack(options)))
    return _report(results, out, options.worker_concurrency)

if __name__ == "__main__":
    sys.exit(main())
