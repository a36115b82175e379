"""The runner's part of ``run_locust --profile rate``: options, CPU and profile watch, drain, report."""

from __future__ import annotations

import argparse
import bisect
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from loadtest.proctree import group_usage
from loadtest.profiling import pyspy_start, summarize_collapsed
from loadtest.rate_plan import WEIGHTS, format_report, plan, requests_per_task, verdicts
from loadtest.stack import ROOT, Stack

PROFILES = ROOT / "var" / "bench"  # raw profiles: large, not for the repository
DRAIN_S = 30.0  # jobs still not terminal this long after locust stopped count as unsettled
QUICK = {"rate_scale": 0.25, "duration_scale": 0.2}  # 5 + 25 req/s for 60 s + 50 req/s for 12 s


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--profile rate")
    group.add_argument("--rate-scale", type=float, default=1.0, help="multiplies every phase's requests/s")
    group.add_argument("--duration-scale", type=float, default=1.0, help="multiplies every phase's seconds")
    group.add_argument("--headroom", type=float, default=4.0,
                       help="users = peak task rate x this many seconds (average task time before arrivals wait)")
    group.add_argument("--quick", action="store_true",
                       help="sanity run: --rate-scale 0.25 --duration-scale 0.2 (about 1.5 min of load)")
    group.add_argument("--pyspy", action="store_true",
                       help="py-spy the web and worker processes through the sustained phase")


def apply_quick(args: argparse.Namespace) -> None:
    if args.quick:
        args.profile = "rate"
        for name, value in QUICK.items():
            if getattr(args, name) == 1.0:
                setattr(args, name, value)


def locust_env(args: argparse.Namespace, stats: Path) -> dict[str, str]:
    if args.profile != "rate":
        return {}
    return {"LOAD_RATE_SCALE": str(args.rate_scale), "LOAD_DURATION_SCALE": str(args.duration_scale),
            "LOAD_RATE_HEADROOM": str(args.headroom), "LOAD_PHASE_STATS": str(stats)}


class Watch:
    """CPU seconds of each process group and of the whole machine (``other``: everything not the
    stack, locust included), sampled every second, and an optional py-spy of web and worker."""

    def __init__(self, args: argparse.Namespace, stack: Stack, prefix: Path) -> None:
        self.stack = stack
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-watch", daemon=True)
        self._spies: dict[str, tuple[Path, Any]] = {}
        self._prefix = prefix
        self._metrics_before = stack.worker_metrics() if args.profile == "rate" else {}
        if args.profile == "rate":
            self._thread.start()
            if args.pyspy:
                phases = plan(args.rate_scale, args.duration_scale)
                # locust takes a second or two to start; the sustained phase follows the warm-up
                timer = threading.Timer(phases[0].seconds + 2, self._spy_start, (phases[1].seconds,))
                timer.daemon = True
                timer.start()

    def _spy_start(self, seconds: float) -> None:
        for name, managed in (("web", self.stack.web), ("worker", (self.stack.workers or [None])[0])):
            if managed is not None and managed.pid:
                path = PROFILES / f"{self._prefix.name}-pyspy-{name}.txt"
                self._spies[name] = (path, pyspy_start(managed.pid, seconds, path, subprocesses=True))

    def _run(self) -> None:
        while not self._stop.is_set():
            usage = {k: u.cpu_seconds for k, u in group_usage(self.stack.process_groups()).items()}
            machine = psutil.cpu_times()
            busy = machine.user + machine.nice + machine.system + getattr(machine, "irq", 0) + \
                getattr(machine, "softirq", 0)
            usage["other"] = busy - sum(usage.values())
            self.samples.append((time.time(), usage))
            self._stop.wait(1.0)

    def finish(self) -> dict[str, Any]:
        self._stop.set()
        after = self.stack.worker_metrics()
        out: dict[str, Any] = {"settlement": _batches({k: v - self._metrics_before.get(k, 0.0)
                                                       for k, v in after.items()})}
        for name, (path, proc) in self._spies.items():
            if proc is not None:
                proc.wait(timeout=120)
            out[f"pyspy_{name}"] = {"file": str(path), **summarize_collapsed(path)}
        return out

    def cores(self, start: float, end: float) -> dict[str, float]:
        """Average cores used by each group between two epoch times (nearest samples)."""
        times = [t for t, _ in self.samples]
        if len(times) < 2:
            return {}
        i = min(bisect.bisect_left(times, start), len(times) - 1)
        j = min(bisect.bisect_left(times, end), len(times) - 1)
        span = times[j] - times[i]
        if span <= 0:
            return {}
        before, after = self.samples[i][1], self.samples[j][1]
        return {k: round((after[k] - before.get(k, 0.0)) / span, 2) for k in after}


def _batches(metrics: dict[str, float]) -> dict[str, Any]:
    """The workers' batch counters over the load (from locust's start to the report)."""
    batches = metrics.get("batches") or 0
    return {**metrics, "jobs_per_batch": round(metrics.get("jobs", 0) / batches, 1) if batches else None,
            "ms_per_batch": round(metrics.get("batch_seconds", 0) * 1000 / batches, 1) if batches else None}


def bounded_drain(db: Any, timeout: float = DRAIN_S) -> dict[str, Any]:
    """Wait (without ringing any partition) until every job is terminal; how many were not, and when."""
    from ledger.states import TERMINAL_JOB_STATUSES

    query = {"status": {"$nin": [str(s) for s in TERMINAL_JOB_STATUSES]}}
    started = time.monotonic()
    left = db.jobs.count_documents(query)
    while left and time.monotonic() - started < timeout:
        time.sleep(0.5)
        left = db.jobs.count_documents(query)
    return {"left": left, "seconds": round(time.monotonic() - started, 1), "timeout_s": timeout,
            "jobs": db.jobs.estimated_document_count()}


def login_cost(web_workers: int) -> dict[str, Any]:
    """The argon2 parameters the web runs with, one verification's CPU here, and logins' share of the load."""
    from infra.config import get_settings
    from services.users import hasher

    settings = get_settings()
    argon = hasher(settings)
    stored = argon.hash("load-test-password")
    argon.verify(stored, "load-test-password")
    started = time.process_time()
    for _ in range(5):
        argon.verify(stored, "load-test-password")
    verify_ms = (time.process_time() - started) / 5 * 1000
    share = WEIGHTS["auth"] / (sum(WEIGHTS.values()) * requests_per_task())
    return {"argon2_memory_kib": settings.argon2_memory_kib, "argon2_time_cost": settings.argon2_time_cost,
            "argon2_parallelism": settings.argon2_parallelism,
            "password_hash_concurrency_per_web_process": settings.password_hash_concurrency,
            "web_processes": web_workers, "verify_cpu_ms": round(verify_ms, 1),
            "logins_share_of_requests": round(share, 3),
            "cores_at_100_rps": round(100 * share * verify_ms / 1000, 2),
            "cores_at_200_rps": round(200 * share * verify_ms / 1000, 2)}


def report(args: argparse.Namespace, stats_path: Path, drain: dict[str, Any] | None, invariants: dict[str, Any],
           peaks: dict[str, int], watch: Watch) -> dict[str, Any]:
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {"phases": []}
    profile = watch.finish()
    t = stats.get("t0_epoch")
    for entry in stats["phases"]:
        if t is not None and "seconds" in entry:
            entry["cpu_cores"] = watch.cores(t, t + entry["seconds"])
            t += entry["seconds"]
    verdict = verdicts(stats["phases"], (drain or {}).get("left"), bool(invariants.get("ok")))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {"profile": "rate", "commit": commit, "rate_scale": args.rate_scale, "duration_scale": args.duration_scale,
            "headroom_s": args.headroom, "pool_users": stats.get("pool"),
            "waiting_arrivals_at_end": stats.get("waiting_arrivals"), "seeded_users": args.users,
            "stack": {"web_workers": args.web_workers, "worker_concurrency": args.worker_concurrency,
                      "rate_limit_enabled": False},
            "login_cost": login_cost(args.web_workers), "phases": stats["phases"], "drain": drain,
            "invariants": invariants, "peak_rss_mib": {k: round(v / 2**20) for k, v in peaks.items()},
            **profile, "verdicts": verdict,
            "table": format_report(stats["phases"], verdict) + _extra_lines(stats["phases"], profile)}


def _extra_lines(phases: list[dict[str, Any]], profile: dict[str, Any]) -> str:
    lines = []
    for entry in phases:
        if entry.get("cpu_cores"):
            cores = ", ".join(f"{k} {v:.2f}" for k, v in entry["cpu_cores"].items())
            lines.append(f"cores used in {entry['phase']}: {cores}")
    for name, spy in profile.items():
        if not name.startswith("pyspy_"):
            continue
        lines.append(f"{name} ({spy.get('samples', 0)} samples), inclusive: " +
                     "; ".join(f"{frame} {share:.0%}" for frame, share in spy.get("inclusive", [])[:8]))
    batches = profile.get("settlement") or {}
    lines.append(f"settle batches: {batches.get('batches', 0):.0f}, {batches.get('jobs_per_batch')} jobs and "
                 f"{batches.get('ms_per_batch')} ms each, {batches.get('conflict_retries', 0):.0f} conflict retries")
    return "".join("\n" + line for line in lines)
