"""Settlement throughput stages: the store's own ceilings, saturation, concurrency, the settle profile.

- :func:`store_ceiling`: single-document ``update_one``/``insert_one``/``find_one`` per second,
  one client, and what a document costs inside a transaction by number of indexes.
- :func:`store_parallel`: the store's own concurrency ratio, N client threads running
  batch transactions on disjoint documents against one thread (alternating rounds).
- :func:`saturation`: settled ops/s of the bench mix with the Celery workers, a backlog
  kept queued by direct submitters (``services.jobs.submit``).
- :func:`concurrency`: :func:`saturation` with 1 and with N ledger processes, alternating,
  conflict retries from ``purser_settle_conflict_retries_total``.
- :func:`settle_profile`: the real ``settle_partition`` in this process on a client with a
  command listener: documents written per settled job (counted from the wire), per-batch
  stage times from ``BatchResult.stages``, client-side time per command and collection,
  and N settler threads against one (transaction retries from ``BatchResult.retries``).
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.commands import CommandCounter, counting_client
from loadtest.common import CpuMeter, MoneyMix, log, partitions_owed_credits, queue_direct, ratio, wait_drained
from loadtest.stack import Stack

# ------------------------------------------------------------------------------- the store alone


def store_ceiling(db: Any, seconds: float) -> dict[str, Any]:
    """Single-document update_one/s, insert_one/s and find_one/s from one client, back to back."""
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
    (keys "0", "2", "4"), and of a ``bulk_write`` of ``$inc`` updates by ``_id`` ("update_0")."""
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


def store_parallel(db: Any, seconds: float, levels: Sequence[int] = (1, 4), rounds: int = 2,
                   updates: int = 50, inserts: int = 50) -> dict[str, Any]:
    """Documents/s of batch transactions from 1 and N client threads on disjoint documents.

    Each transaction is shaped like a settle batch: ``updates`` ``$inc`` by ``_id`` on the
    thread's own range of documents and ``inserts`` inserts into a collection with one
    secondary index. No two threads ever write a common document, so whatever the
    ratio loses is the store's own cost of concurrency (its cores, locks, GIL).
    Levels alternate ``rounds`` times, ``seconds / rounds`` each, so a machine that
    speeds up or slows down during the stage moves every level alike.
    """
    from pymongo import ASCENDING, UpdateOne

    top = max(levels)
    span = 1000
    wallets, log_coll = db.bench_parallel, db.bench_parallel_log
    wallets.drop()
    log_coll.drop()
    wallets.insert_many([{"_id": i, "n": 0} for i in range(top * span)])
    log_coll.create_index([("k", ASCENDING)])
    docs: Counter[int] = Counter()
    txns: Counter[int] = Counter()
    spent: Counter[int] = Counter()
    errors: Counter[str] = Counter()

    def run(threads: int, duration: float) -> None:
        stop = threading.Event()
        counts = [0] * threads

        def client(t: int) -> None:
            base, i = t * span, 0
            while not stop.is_set():
                ops = [UpdateOne({"_id": base + (i + k) % span}, {"$inc": {"n": 1}}) for k in range(updates)]
                rows = [{"k": f"{t}-{i}-{k}", "t": t, "pad": "x" * 100} for k in range(inserts)]
                i += updates
                try:
                    with db.client.start_session() as session, session.start_transaction():
                        wallets.bulk_write(ops, session=session)
                        log_coll.insert_many(rows, session=session)
                    counts[t] += 1
                except Exception as exc:  # noqa: BLE001 - counted: there should be none
                    errors[type(exc).__name__] += 1

        workers = [threading.Thread(target=client, args=(t,), daemon=True) for t in range(threads)]
        started = time.perf_counter()
        for w in workers:
            w.start()
        time.sleep(duration)
        stop.set()
        for w in workers:
            w.join(timeout=30)
        spent[threads] += time.perf_counter() - started
        txns[threads] += sum(counts)
        docs[threads] += sum(counts) * (updates + inserts)

    for r in range(rounds):
        for threads in abba(levels, r):
            run(threads, seconds / rounds)
    wallets.drop()
    log_coll.drop()
    rates = {str(n): round(docs[n] / spent[n], 1) for n in levels}
    out: dict[str, Any] = {
        "docs_per_s": rates, "txns_per_s": {str(n): round(txns[n] / spent[n], 1) for n in levels},
        "docs_per_txn": updates + inserts, "rounds": rounds, "seconds_per_level": round(seconds, 1),
        "errors": dict(errors),
    }
    for n in levels:
        if n != 1:
            out[f"ratio_{n}_1"] = ratio(docs[n] / spent[n], docs[1] / spent[1])
    return out


# ------------------------------------------------------------------------------- saturation


def saturation(stack: Stack, db: Any, mix: MoneyMix, *, seconds: float, warmup: float, submit_threads: int,
               batch_max: int) -> dict[str, Any]:
    """Settled ops/s for ``seconds`` with a backlog kept queued by direct submitters.

    The workers must be running; settled ops/s counts jobs whose ``settledAt`` falls
    inside the window. The backlog is what was submitted minus what the workers report
    as decided (their metrics port), so watching it costs the store nothing.
    """
    from infra.config import get_settings
    from services.jobs import submit
    from tasks.settle import ring

    partitions = get_settings().ledger_partitions
    # Enough for a full batch in every partition; more only lengthens the drain after the window.
    cap = max(400, min(4000, batch_max * partitions))
    stop = threading.Event()
    backlog = {"now": 0}
    samples: list[int] = []
    submitted: Counter[str] = Counter()
    lock = threading.Lock()
    done_before = stack.worker_metrics().get("jobs", 0.0)

    def monitor() -> None:
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
    threads += [threading.Thread(target=submitter, daemon=True) for _ in range(submit_threads)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    samples.clear()
    metrics0 = stack.worker_metrics()
    hist0 = stack.worker_histogram()
    cpu = CpuMeter(stack).start()
    t0 = datetime.now(UTC)
    time.sleep(seconds)
    t1 = datetime.now(UTC)
    cores = cpu.stop()
    metrics1 = stack.worker_metrics()
    hist1 = stack.worker_histogram()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    # The real queue at the end of the window (index counts), to check the backlog estimate.
    queued_at_end = sum(db.jobs.count_documents({"partition": p, "status": "queued"}) for p in range(partitions))
    drain = wait_drained(db)
    window = {"settledAt": {"$gte": t0, "$lt": t1}}
    settled = db.jobs.count_documents({**window, "status": "settled"})
    failed = db.jobs.count_documents({**window, "status": "failed"})
    elapsed = (t1 - t0).total_seconds()
    delta = {k: metrics1.get(k, 0.0) - metrics0.get(k, 0.0) for k in metrics1}
    batches = delta.get("batches", 0.0)
    return {
        "batch_max": batch_max, "concurrency": stack.worker_concurrency, "seconds": round(elapsed, 1),
        "ops_per_s": round(settled / elapsed, 1), "failed_per_s": round(failed / elapsed, 1),
        "settled": settled, "failed": failed, "submitted": submitted["n"],
        "submission": f"direct services.jobs.submit from {submit_threads} threads, backlog capped at {cap}",
        "backlog_mean": round(sum(samples) / len(samples), 1) if samples else None,
        "backlog_min": min(samples) if samples else None, "queued_at_end": queued_at_end,
        "batches": int(batches), "mean_batch_size": round(delta.get("jobs", 0.0) / batches, 1) if batches else None,
        "mean_batch_ms": round(1000 * delta.get("batch_seconds", 0.0) / batches, 1) if batches else None,
        "conflict_retries": int(delta.get("conflict_retries", 0.0)),
        "batch_size_histogram": _histogram_delta(hist0, hist1),
        "cpu_cores": cores, "drain_after_s": round(drain, 1),
    }


def _histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Batches per size bucket (``"<=le"``) in the window, from two cumulative snapshots."""
    def key(le: str) -> float:
        return float("inf") if le == "+Inf" else float(le)

    out: dict[str, int] = {}
    previous = 0.0
    for le in sorted(after, key=key):
        cumulative = after[le] - before.get(le, 0.0)
        if cumulative - previous:
            out[f"<={le}"] = int(cumulative - previous)
        previous = cumulative
    return out


def abba(levels: Sequence[int], round_: int) -> list[int]:
    """Levels in order on even rounds, reversed on odd ones (ABBA): linear drift of a shared
    machine then weighs on every level alike."""
    return list(levels) if round_ % 2 == 0 else list(reversed(levels))


def concurrency(stack: Stack, db: Any, mix: MoneyMix, *, levels: Sequence[int], rounds: int, seconds: float,
                warmup: float, submit_threads: int, batch_max: int,
                profile: Any = None) -> dict[str, Any]:
    """:func:`saturation` with each number of ledger processes in ``levels``, alternating ``rounds`` times.

    ``profile(concurrency, round)`` may return a callable run after that saturation run
    (py-spy recordings); it is called before each run.
    """
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        for level in abba(levels, r):
            stack.restart_workers({"SETTLE_BATCH_MAX": str(batch_max)}, concurrency=level)
            after = profile(level, r) if profile is not None else None
            log(f"saturation: {level} ledger process(es), round {r + 1}/{rounds}")
            runs.append(saturation(stack, db, mix, seconds=seconds, warmup=warmup,
                                   submit_threads=submit_threads, batch_max=batch_max))
            if after is not None:
                after()
    out: dict[str, Any] = {"levels": list(levels), "rounds": rounds, "runs": runs}
    for level in levels:
        mine = [run for run in runs if run["concurrency"] == level]
        secs = sum(run["seconds"] for run in mine)
        batches = sum(run["batches"] for run in mine)
        out[f"c{level}"] = {
            "ops_per_s": round(sum(run["settled"] for run in mine) / secs, 1) if secs else None,
            "conflict_retries": sum(run["conflict_retries"] for run in mine),
            "batches": batches, "seconds": round(secs, 1),
            "mean_batch_size": round(sum((run["mean_batch_size"] or 0) * run["batches"] for run in mine) / batches,
                                     1) if batches else None,
            "per_round_ops_per_s": [run["ops_per_s"] for run in mine],
            "mongodb_cores": [run["cpu_cores"].get("mongodb") for run in mine],
            "worker_cores": [run["cpu_cores"].get("worker") for run in mine],
        }
    base = out.get("c1", {}).get("ops_per_s")
    for level in levels:
        if level != 1:
            out[f"ratio_{level}_1"] = ratio(out[f"c{level}"]["ops_per_s"], base)
    return out


# ------------------------------------------------------------------------------- in-process settle profile


def drain_in_process(db: Any, partitions: int, batch_max: int, threads: int) -> tuple[list[Any], float, int]:
    """Settle every partition with ``threads`` settlers (partitions dealt round-robin) until nothing
    is queued and no deferred credit is unapplied; ``(batches, seconds, passes)``.

    One pass is not enough: a partition drained early is owed credits by the batches of
    partitions drained after it, so passes repeat until the credits are applied too.
    """
    from services.batch_read import has_queued
    from services.settlement import settle_partition

    batches: list[Any] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(mine: list[int]) -> None:
        try:
            for p in mine:
                drained = settle_partition(db, p, partitions=partitions, batch_max=batch_max)
                with lock:
                    batches.extend(drained.batches)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    started = time.perf_counter()
    todo = list(range(partitions))
    passes = 0
    while todo:
        passes += 1
        workers = [threading.Thread(target=run, args=(todo[t::threads],)) for t in range(min(threads, len(todo)))]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
        owed = set(partitions_owed_credits(db, partitions))
        todo = [p for p in range(partitions) if p in owed or has_queued(db, p)]
        if passes > 50:
            raise RuntimeError(f"in-process drain did not converge: partitions {todo} still have work")
    return batches, time.perf_counter() - started, passes


def _batch_summary(batches: list[Any], seconds: float) -> dict[str, Any]:
    jobs = sum(b.size for b in batches)
    settled = sum(b.settled for b in batches)
    stage_s: Counter[str] = Counter()
    for b in batches:
        for name, value in b.stages.items():
            stage_s[name] += value
    in_batches = sum(b.duration for b in batches)
    # What BatchResult.stages does not cover: session start, commit, retried attempts, backoff.
    stage_s["commit, session and retries"] = max(0.0, in_batches - sum(stage_s.values()))
    stage_s["between batches (drain loop)"] = max(0.0, seconds - in_batches)
    return {
        "jobs": jobs, "settled": settled, "failed": jobs - settled, "batches": len(batches),
        "credit_batches": sum(1 for b in batches if b.size == 0 and b.credits_applied),
        "credits_applied": sum(b.credits_applied for b in batches),
        "seconds": round(seconds, 2), "ops_per_s": round(jobs / seconds, 1) if seconds else None,
        "retries": sum(b.retries for b in batches),
        "documents_reported": sum(b.documents for b in batches),
        "stages": {k: {"seconds": round(v, 3), "share": round(v / seconds, 3) if seconds else None,
                       "us_per_job": round(1e6 * v / max(1, jobs), 1)}
                   for k, v in sorted(stage_s.items(), key=lambda kv: -kv[1])},
    }


def transfer_documents(cdb: Any, counter: CommandCounter, mix: MoneyMix, jobs: int, partitions: int,
                       batch_max: int) -> dict[str, Any]:
    """Documents written per transfer end to end (issue 24's target: <= 3), counted on the wire.

    ``jobs`` transfers are accepted through ``cdb`` (the batch intake: one document per
    job, as the web path's insert or group commit writes) and settled by one settler;
    every insert document and update/delete statement either side sent, every attempt
    included, ÷ transfers settled. Failed transfers (a payer out of money) count in the
    denominator as jobs too: what they cost is what the store was asked to do.
    """
    counter.take()
    queue_direct(cdb, mix, jobs, partitions, kinds=("transfer",))
    accepted = counter.take()
    batches, seconds, _ = drain_in_process(cdb, partitions, batch_max, 1)
    settled = counter.take()
    n = max(1, sum(b.size for b in batches))
    by_coll: Counter[str] = Counter(settled.written_by_collection())
    return {"transfers": n, "failed": n - sum(b.settled for b in batches), "batches": len(batches),
            "mean_batch": round(n / max(1, len(batches)), 1),
            "accept_documents_per_transfer": round(accepted.written() / n, 2),
            "settle_documents_per_transfer": round(settled.written() / n, 2),
            "documents_per_transfer": round((accepted.written() + settled.written()) / n, 2),
            "settle_by_collection": {k: round(v / n, 3) for k, v in by_coll.most_common()},
            "reads_per_transfer": round((accepted.reads() + settled.reads()) / n, 2),
            "ops_per_s_one_settler": round(n / seconds, 1) if seconds else None}


def settle_profile(stack: Stack, db: Any, mix: MoneyMix, *, jobs: int, batch_max: int,
                   levels: Sequence[int] = (1, 4), rounds: int = 1,
                   profile_html: Path | None = None) -> dict[str, Any]:
    """The settle loop in this process, workers stopped, on a client whose commands are counted.

    Each round queues ``jobs`` jobs of the bench mix directly and drains them with each
    number of settler threads in ``levels`` (alternating). Documents written per
    settled job come from the command listener (insert documents + update and delete
    statements, every attempt included) over the rounds with one settler; the per-batch
    stage split from ``BatchResult.stages``.
    """
    from infra.config import get_settings

    settings = get_settings()
    partitions = settings.ledger_partitions
    counter = CommandCounter()
    client = counting_client(settings.mongodb_uri, counter)
    cdb = client[settings.mongodb_db]
    wait_drained(db)  # nothing queued, no credit left over from the previous stage
    concurrency_before = stack.worker_concurrency
    stack.stop_workers()
    result: dict[str, Any] = {"batch_max": batch_max, "levels": list(levels), "rounds": rounds}
    per_level: dict[int, list[tuple[list[Any], float, Any]]] = {n: [] for n in levels}
    try:
        for r in range(rounds):
            for n in abba(levels, r):
                queue_direct(db, mix, jobs, partitions)
                counter.take()
                profiler = None
                if profile_html is not None and n == 1 and r == 0:
                    with contextlib.suppress(ImportError):
                        from pyinstrument import Profiler

                        profiler = Profiler(interval=0.001)
                        profiler.start()
                try:
                    batches, seconds, passes = drain_in_process(cdb, partitions, batch_max, n)
                finally:
                    if profiler is not None:
                        profiler.stop()
                tally = counter.take()
                per_level[n].append((batches, seconds, tally))
                if profiler is not None and profile_html is not None:
                    profile_html.parent.mkdir(parents=True, exist_ok=True)
                    profile_html.write_text(profiler.output_html())
                    result["profile_html"] = str(profile_html)
                log(f"in-process settle: {n} settler(s), {sum(b.size for b in batches)} jobs in {seconds:.1f} s "
                    f"({passes} passes)")
        result["transfers_end_to_end"] = transfer_documents(cdb, counter, mix, jobs, partitions, batch_max)
    finally:
        client.close()
        stack.start_workers({"SETTLE_BATCH_MAX": str(batch_max)}, concurrency=concurrency_before)

    for n, runs in per_level.items():
        batches = [b for run in runs for b in run[0]]
        seconds = sum(run[1] for run in runs)
        summary = _batch_summary(batches, seconds)
        written = sum(run[2].written() for run in runs)
        reads = sum(run[2].reads() for run in runs)
        by_coll: Counter[str] = Counter()
        ms: Counter[str] = Counter()
        for run in runs:
            by_coll.update(run[2].written_by_collection())
            ms.update(run[2].micros)
        settled = max(1, summary["settled"])
        summary.update({
            "documents_written": written,
            "documents_per_settled_job": round(written / settled, 2),
            "documents_per_job_by_collection": {k: round(v / settled, 3) for k, v in by_coll.most_common()},
            "reported_documents_per_settled_job": round(summary["documents_reported"] / settled, 2),
            "reads_per_settled_job": round(reads / settled, 2),
            "client_ms_per_job_by_command": {k: round(v / 1000 / settled, 3) for k, v in ms.most_common(14)},
            "client_share_by_command": {k: round(v / 1e6 / seconds, 3) for k, v in ms.most_common(14)}
            if seconds else {},
        })
        result[f"t{n}"] = summary
    one = result.get("t1", {})
    result["documents_per_settled_job"] = one.get("documents_per_settled_job")
    result["ops_per_s_one_settler"] = one.get("ops_per_s")
    for n in levels:
        if n != 1:
            result[f"ratio_{n}_1"] = ratio(result[f"t{n}"]["ops_per_s"], one.get("ops_per_s"))
    result["note"] = ("documents = insert documents + update/delete statements sent by settle_partition "
                      "(command listener), every transaction attempt included; stage times per batch from "
                      "BatchResult.stages (read/decide/write inside the transaction callback)")
    return result
