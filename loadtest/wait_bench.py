"""``python -m loadtest.wait_bench``: many clients waiting on their jobs, others reading balances.

Issue 15, item 3 ("waiting is cheap"). Starts an isolated stack (fresh SecantusDB and
Redis on free ports, gunicorn with the configured worker class, one Celery ledger
worker, rate limits off) and measures:

1. baseline: ``--readers`` clients read their balance, each every ``--reader-interval`` s;
2. the same readers while ``--waiters`` clients each wait (``GET /api/jobs/<id>``
   with ``Prefer: wait=10``) on a job of their own that settles about ``--hold`` s
   after the first wait began: the jobs (provider top-ups) are queued durably but
   their doorbells are held back, as by a paused ledger worker, then rung all at
   once. The waiters arrive evenly over ``--ramp`` s (default 2.5, 200/s).

For every waiter: how long after its job's batch COMMITTED it got its answer. The
commit instant is the timestamp the settler puts in the announcement, taken right
after the transaction returned (the bench subscribes to the announcement channel
like a web process); the lag behind the job's ``settledAt`` (written inside the
transaction, so a little earlier) is reported too. Waiters per user stay within
the per-user cap (``JOB_WAIT_MAX_PER_USER``, default 5).

Clients are asyncio coroutines over raw HTTP/1.1 in this one process (no thread per
client), so the client side does not distort what it measures. Writes
``loadtest/results/wait-<date>.json`` and prints a summary with the targets:
balance p99 <= 100 ms while waiting, every waiter answered <= 100 ms after its
job settled. Exit status 1 when a waiter was not answered with its settled job
(or a stage crashed), 0 otherwise, whether or not the latency targets are met.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from loadtest.common import log, log_as, percentiles
from loadtest.plan import RESULTS, WAIT, Plan
from loadtest.proctree import group_usage, own_cpu_seconds, tree
from loadtest.profiling import pyspy_start
from loadtest.stack import MemorySampler, Stack, StackOptions

TARGET_BALANCE_P99_MS = 100.0
TARGET_ANSWER_LAG_MS = 100.0


# ------------------------------------------------------------------------- a tiny client


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    started: float  # time.time()
    done: float

    @property
    def ms(self) -> float:
        return (self.done - self.started) * 1000

    def json(self) -> Any:
        return json.loads(self.body)


async def http_get(host: str, port: int, path: str, headers: dict[str, str], timeout: float) -> Answer:
    """One ``GET`` on a fresh connection (``Connection: close``); raises on any failure."""
    started = time.time()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()

        async def read() -> Answer:
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            found: dict[str, str] = {}
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                found[name.strip().lower()] = value.strip()
            length = int(found.get("content-length", "0") or 0)
            body = await reader.readexactly(length) if length else await reader.read()
            return Answer(status, found, body, started, time.time())

        return await asyncio.wait_for(read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


# ------------------------------------------------------------------------- the scenario


@dataclass
class Run:
    plan: Plan
    host: str
    port: int
    reader_tokens: list[str]
    waiter_jobs: list[tuple[str, str]]  # (token, job id)
    ring_all: Any
    readings: list[tuple[float, float, int]] = field(default_factory=list)  # (start, ms, status)
    reader_errors: list[str] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)
    waiter_errors: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, dict[str, float]] = field(default_factory=dict)  # phase start -> group CPU seconds
    stack: Stack | None = None
    announcements: Any = None
    stop_readers: asyncio.Event | None = None

    def wait_settled(self) -> None:
        """Control run: until every held job was announced (or 30 s)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(self.announcements.published) < len(self.waiter_jobs):
            time.sleep(0.01)

    def mark(self, phase: str) -> None:
        self.phases[phase] = time.time()
        if self.stack is not None:
            self.cpu[phase] = group_cpu(self.stack)

    async def reader(self, token: str, offset: float) -> None:
        assert self.stop_readers is not None
        await asyncio.sleep(offset)
        headers = {"Authorization": f"Bearer {token}"}
        while not self.stop_readers.is_set():
            tick = time.monotonic()
            try:
                answer = await http_get(self.host, self.port, "/api/wallet/balance", headers, 10.0)
                self.readings.append((answer.started, answer.ms, answer.status))
                if answer.status != 200:
                    self.reader_errors.append(f"status {answer.status}")
            except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                self.reader_errors.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(max(0.0, self.plan.reader_interval - (time.monotonic() - tick)))

    async def waiter(self, token: str, job_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        headers = {"Authorization": f"Bearer {token}", "Prefer": f"wait={self.plan.wait_seconds}"}
        try:
            self.answers[job_id] = await http_get(self.host, self.port, f"/api/jobs/{job_id}", headers,
                                                  self.plan.wait_seconds + 20.0)
        except Exception as exc:  # noqa: BLE001
            self.waiter_errors.append(f"{job_id}: {type(exc).__name__}: {exc}")

    async def main(self) -> None:
        self.stop_readers = asyncio.Event()
        plan = self.plan
        readers = [asyncio.create_task(self.reader(token, i * plan.reader_interval / max(1, len(self.reader_tokens))))
                   for i, token in enumerate(self.reader_tokens)]
        self.mark("baseline_start")
        await asyncio.sleep(plan.baseline)
        self.mark("waits_start")
        count = len(self.waiter_jobs)
        waiters = [] if plan.control else [
            asyncio.create_task(self.waiter(token, job_id, plan.ramp * i / count))
            for i, (token, job_id) in enumerate(self.waiter_jobs)]
        await asyncio.sleep(plan.hold)
        self.mark("ring")
        await asyncio.get_running_loop().run_in_executor(None, self.ring_all)
        if plan.control:
            await asyncio.get_running_loop().run_in_executor(None, self.wait_settled)
        await asyncio.gather(*waiters)
        self.mark("waits_end")
        await asyncio.sleep(0.5)
        self.stop_readers.set()
        await asyncio.gather(*readers)
        self.mark("end")


def start_profilers(stack: Stack, directory: Path, seconds: float) -> list[Any]:
    """py-spy (collapsed stacks, 100 Hz) on the web worker processes, the ledger worker's pool and the store."""
    directory.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, processes in stack.process_groups().items():
        if name not in ("web", "worker", "mongodb"):
            continue
        for managed in processes:
            # The web's and the worker's children do the work; the store is one process.
            for proc in (tree(managed)[:1] if name == "mongodb" else tree(managed, root=False)):
                spy = pyspy_start(proc.pid, seconds, directory / f"{name}-{proc.pid}.txt")
                if spy is not None:
                    procs.append(spy)
    log(f"profiling {len(procs)} processes into {directory}")
    return procs


def raise_priority(stack: Stack, nice: int) -> list[str]:
    """Give the stack's processes a CPU weight of ``nice`` (e.g. -5) against other sessions.

    Linux schedules sessions as groups (autogroup): every process the stack starts
    runs in a session of its own and gets an equal share against each of the other
    sessions on the machine, whatever its nice value. On a shared machine, other
    people's test runs then decide the measured latencies; ``/proc/<pid>/autogroup``
    sets the weight of a whole session. Needs root; the reason is reported if not.
    """
    done = []
    for _name, processes in stack.process_groups().items():
        for managed in processes:
            if managed.pid is None:
                continue
            try:
                Path(f"/proc/{managed.pid}/autogroup").write_text(f"{nice}\n")
                done.append(f"{managed.name}: autogroup nice {nice}")
            except OSError as exc:
                done.append(f"{managed.name}: not changed ({exc.strerror})")
    with contextlib.suppress(OSError):
        Path(f"/proc/{psutil.Process().pid}/autogroup").write_text(f"{nice}\n")
    return done


def group_cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process group of the stack, children included."""
    totals = {name: used.cpu_seconds for name, used in group_usage(stack.process_groups()).items()}
    totals["bench-client"] = own_cpu_seconds()
    machine = psutil.cpu_times()
    # Everything else on the machine (other users' processes): machine busy time minus ours.
    totals["other"] = machine.user + machine.system + getattr(machine, "nice", 0.0) - sum(totals.values())
    return totals


class AnnouncementLog:
    """Subscribes to the settler's announcements: the commit instant of every job."""

    def __init__(self, redis_url: str, channel: str) -> None:
        import redis

        self._pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        self.published: dict[str, float] = {}
        self.received: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="announcements", daemon=True)

    def start(self) -> AnnouncementLog:
        self._thread.start()
        return self

    def _run(self) -> None:
        from infra.announce import decode

        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.5)
            if message is None or message.get("type") != "message":
                continue
            now = time.time()
            decoded = decode(message["data"])
            if decoded is not None:
                for job_id, _ in decoded.jobs:
                    self.published[job_id] = decoded.published_at
                    self.received[job_id] = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)
        self._pubsub.close()


def web_metrics(base_url: str) -> dict[str, float]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{base_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("purser_job_wait", "purser_announce")):
                key = sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items()))
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def summarise(run: Run, announcements: AnnouncementLog, settled_at: dict[str, float]) -> dict[str, Any]:
    plan = run.plan
    waits_start, waits_end = run.phases["waits_start"], run.phases["waits_end"]
    ring_at = run.phases["ring"]
    baseline = [ms for start, ms, _ in run.readings if start < waits_start]
    during = [ms for start, ms, _ in run.readings if waits_start <= start <= waits_end]
    holding = [ms for start, ms, _ in run.readings if waits_start <= start < ring_at]
    settling = [ms for start, ms, _ in run.readings if ring_at <= start <= waits_end]
    # Per 250 ms of the run: where the slow reads were.
    timeline: dict[float, list[float]] = {}
    for start, ms, _ in run.readings:
        timeline.setdefault(round((start - run.phases["baseline_start"]) // 0.25 * 0.25, 2), []).append(ms)
    lags, lags_settled_at, not_settled, no_announcement, not_applied = [], [], [], 0, 0
    after_ring = []
    for _token, job_id in run.waiter_jobs:
        answer = run.answers.get(job_id)
        if answer is None:
            continue
        body = answer.json() if answer.status == 200 else {}
        if answer.status != 200 or body.get("status") not in ("settled", "failed"):
            not_settled.append({"jobId": job_id, "status": answer.status, "job": body.get("status")})
            continue
        if "preference-applied" not in answer.headers:
            not_applied += 1
        after_ring.append((answer.done - run.phases["ring"]) * 1000)
        committed = announcements.published.get(job_id)
        if committed is None:
            no_announcement += 1
        else:
            lags.append((answer.done - committed) * 1000)
        if job_id in settled_at:
            lags_settled_at.append((answer.done - settled_at[job_id]) * 1000)
    commits = sorted(announcements.published.values())
    within = sum(1 for lag in lags if lag <= TARGET_ANSWER_LAG_MS)
    return {
        "balance_ms": {"baseline": percentiles(baseline), "while_waiting": percentiles(during),
                       "while_waiting_before_ring": percentiles(holding),
                       "while_waiting_settling": percentiles(settling),
                       "timeline_max_ms_per_250ms": {str(k): round(max(v), 1) for k, v in sorted(timeline.items())},
                       "requests": len(run.readings), "errors": len(run.reader_errors),
                       "error_samples": run.reader_errors[:5],
                       "offered_per_s": round(plan.readers / plan.reader_interval, 1)},
        "waiters": {
            "clients": len(run.waiter_jobs),
            "answered": len(run.answers),
            "answered_terminal": len(lags) + no_announcement,
            "not_terminal": len(not_settled),
            "not_terminal_samples": not_settled[:5],
            "errors": len(run.waiter_errors),
            "error_samples": run.waiter_errors[:5],
            "preference_not_applied": not_applied,
            "without_announcement": no_announcement,
            "answer_after_commit_ms": percentiles(lags),
            "answer_after_settledAt_ms": percentiles(lags_settled_at),
            "within_100ms_of_commit": within,
            "answer_after_ring_ms": percentiles(after_ring),
        },
        "settlement": {
            "first_commit_after_ring_ms": round((commits[0] - run.phases["ring"]) * 1000, 1) if commits else None,
            "last_commit_after_ring_ms": round((commits[-1] - run.phases["ring"]) * 1000, 1) if commits else None,
            "announced_jobs": len(commits),
        },
        "phases_s": {name: round(value - run.phases["baseline_start"], 3) for name, value in run.phases.items()},
        "cpu_pct_of_one_core": cpu_phases(run),
    }


def cpu_phases(run: Run) -> dict[str, dict[str, float]]:
    """Per phase, the CPU each process group used, in % of one core (2 cores = 200 %)."""
    order = ["baseline_start", "waits_start", "ring", "waits_end"]
    names = {"baseline_start": "baseline", "waits_start": "waiting_before_ring", "ring": "settling"}
    out: dict[str, dict[str, float]] = {}
    for start, end in zip(order, order[1:], strict=False):
        if start not in run.cpu or end not in run.cpu:
            continue
        seconds = max(1e-6, run.phases[end] - run.phases[start])
        out[names[start]] = {group: round(100 * (run.cpu[end].get(group, 0.0) - used) / seconds, 1)
                             for group, used in run.cpu[start].items()}
    return out


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    balance = summary["balance_ms"]["while_waiting"]["p99"]
    waiters = summary["waiters"]
    worst = waiters["answer_after_commit_ms"]["max"]
    all_answered = (waiters["answered_terminal"] == waiters["clients"] and not waiters["errors"]
                    and not waiters["without_announcement"])
    return [
        {"target": "balance p99 ms while waiting", "limit": TARGET_BALANCE_P99_MS, "measured": balance,
         "pass": balance is not None and balance <= TARGET_BALANCE_P99_MS},
        {"target": "every waiter answered <= 100 ms after its job's commit (max ms)",
         "limit": TARGET_ANSWER_LAG_MS, "measured": worst,
         "pass": all_answered and worst is not None and worst <= TARGET_ANSWER_LAG_MS},
    ]


def run_bench(plan: Plan, keep: bool = False) -> dict[str, Any]:
    stack = Stack(StackOptions(web_workers=plan.web_workers, web_threads=plan.web_threads, keep=keep,
                               log_level="WARNING"))
    stack.env["WEB_WORKER_CLASS"] = plan.worker_class
    try:
        log(f"stack in {stack.tmp}")
        stack.start_stores()
        web = stack.start_web()
        stack.start_workers()
        sampler = MemorySampler(stack).start()
        if plan.priority is not None:
            log("; ".join(raise_priority(stack, plan.priority)))

        from api.auth import issue_token
        from infra.announce import channel
        from infra.config import get_settings
        from infra.mongo import get_db
        from loadtest.seed import seed_population, submit_topups
        from tasks.settle import ring

        settings = get_settings()
        db = get_db()
        users_needed = -(-plan.waiters // plan.waits_per_user) + plan.readers
        pop = seed_population(db, free=users_needed, premium=0, creators=0, admins=0)
        people = pop.users
        readers, waiting_users = people[:plan.readers], people[plan.readers:]
        tokens = {u.id: issue_token(settings, u.id, u.role)[0] for u in people}

        held: list[int] = []
        owners = [waiting_users[i // plan.waits_per_user] for i in range(plan.waiters)]
        # One top-up per waiter, queued durably, doorbells held back (a paused ledger worker).
        job_ids = submit_topups(db, [o.id for o in owners], 10, partitions=settings.ledger_partitions,
                                ring=lambda p, _r: held.append(p))
        partitions = sorted(set(held))

        def ring_all() -> None:
            for partition in partitions:
                ring(partition, None, force=True)

        log(f"{len(people)} users, {len(job_ids)} held jobs on {len(partitions)} partitions; "
            f"web {plan.web_workers} x {plan.worker_class}")
        announcements = AnnouncementLog(settings.redis_url, channel(settings.mongodb_db)).start()
        host, port = "127.0.0.1", web.port
        run = Run(plan, host, port, [tokens[u.id] for u in readers],
                  [(tokens[o.id], j) for o, j in zip(owners, job_ids, strict=True)], ring_all,
                  stack=stack, announcements=announcements)
        profilers = start_profilers(stack, plan.profile, plan.baseline + plan.hold + 8) if plan.profile else []
        before = web_metrics(web.base_url)
        cpu_before = psutil.cpu_times()
        asyncio.run(run.main())
        cpu_after = psutil.cpu_times()
        time.sleep(0.5)
        announcements.stop()
        after = web_metrics(web.base_url)
        peaks = sampler.stop()
        for proc in profilers:
            with contextlib.suppress(Exception):
                proc.wait(timeout=30)

        settled_at = {}
        for doc in db.jobs.find({"_id": {"$in": job_ids}}, {"settledAt": 1}):
            if doc.get("settledAt") is not None:
                stamp = doc["settledAt"]
                stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
                settled_at[doc["_id"]] = stamp.timestamp()
        summary = summarise(run, announcements, settled_at)
        elapsed = run.phases["end"] - run.phases["baseline_start"]
        busy = sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in ("user", "system"))
        summary["web_metrics_delta"] = {k: round(after.get(k, 0.0) - before.get(k, 0.0), 3)
                                        for k in sorted(set(after) | set(before))
                                        if not k.startswith("purser_job_waits_active")}
        summary["machine_cpu_busy_pct"] = round(100 * busy / (elapsed * (psutil.cpu_count() or 1)), 1)
        summary["peak_rss_mib"] = {name: round(rss / 2**20, 1) for name, rss in peaks.items()}
        return summary
    finally:
        stack.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.wait_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=500)
    parser.add_argument("--readers", type=int, default=20)
    parser.add_argument("--reader-interval", type=float, default=0.1,
                        help="seconds between one reader's requests (default 0.1: 20 readers = 200/s)")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds the jobs are held before settling")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--worker-class", choices=("gevent", "gthread"), default="gevent")
    parser.add_argument("--web-threads", type=int, default=8, help="threads per process (gthread only)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default loadtest/results/wait-<date>.json)")
    parser.add_argument("--ramp", type=float, default=Plan.ramp,
                        help="waiters arrive evenly over this many seconds (default 2.5: 200/s; 0: all at once)")
    parser.add_argument("--control", action="store_true",
                        help="hold and settle the jobs but start no waiter: settlement's own effect on reads")
    parser.add_argument("--profile", type=Path, default=None,
                        help="record py-spy collapsed stacks of the web and worker processes into this folder")
    parser.add_argument("--priority", type=int, default=None, metavar="NICE",
                        help="autogroup nice (-20..19) for the stack's sessions: a CPU weight against other "
                             "sessions on a shared machine (root only; default: leave as is)")
    parser.add_argument("--keep", action="store_true", help="keep the stack's temporary directory")
    args = parser.parse_args(argv)
    log_as("wait-bench")
    plan = Plan(waiters=args.waiters, readers=args.readers, reader_interval=args.reader_interval, hold=args.hold,
                web_workers=args.web_workers, worker_class=args.worker_class, web_threads=args.web_threads,
                ramp=args.ramp, control=args.control, profile=args.profile, priority=args.priority)
    started = datetime.now(UTC)
    try:
        summary = run_bench(plan, keep=args.keep)
    except Exception:  # noqa: BLE001 - report and fail
        traceback.print_exc()
        return 1
    result = {
        "scenario": "wait_bench", "started": started.isoformat(timespec="seconds"),
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version(),
                    "memory_gib": round(psutil.virtual_memory().total / 2**30, 1)},
        "plan": plan.record(WAIT), "results": summary,
    }
    result["targets"] = targets(summary)
    out = args.out or RESULTS / f"wait-{started.strftime('%Y-%m-%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    waiters = summary["waiters"]
    print(f"\nwait bench: {plan.waiters} waiters, {plan.readers} readers every {plan.reader_interval}s, "
          f"web {plan.web_workers} x {plan.worker_class}")
    print(f"  balance ms baseline      {summary['balance_ms']['baseline']}")
    print(f"  balance ms while waiting {summary['balance_ms']['while_waiting']}  errors "
          f"{summary['balance_ms']['errors']}")
    print(f"  waiters answered terminal {waiters['answered_terminal']}/{waiters['clients']}  "
          f"errors {waiters['errors']}  not terminal {waiters['not_terminal']}")
    print(f"  answer after commit ms   {waiters['answer_after_commit_ms']}")
    print(f"  answer after settledAt ms {waiters['answer_after_settledAt_ms']}")
    print(f"  CPU % of one core per phase {summary['cpu_pct_of_one_core']}")
    print(f"  settlement {summary['settlement']}  web RSS MiB {summary['peak_rss_mib']}")
    for row in result["targets"]:
        print(f"  {'PASS' if row['pass'] else 'MISS'}  {row['target']}: {row['measured']} (limit {row['limit']})")
    print(f"  written to {out}")
    complete = plan.control or (waiters["answered_terminal"] == waiters["clients"] and not waiters["errors"])
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
