"""``python -m loadtest.run_locust [--profile full|short|rate] [--scale 1]``: the locust profile on an isolated stack.

Starts the same isolated stack as the benchmark (fresh stores on free ports,
gunicorn, Celery workers, rate limits off), seeds users of every tier and funds
them through the workers, writes the manifest, runs ``locust`` headless with
``loadtest/locustfile.py`` (CSV and HTML reports in ``loadtest/results/``), then
checks the money invariants. Exit status: locust's, or 1 when an invariant broke.

``--profile rate`` drives locust by arrival rate (``loadtest/rate_plan.py``) and
adds a per-phase report: requests/s achieved, p50/p95/p99 per request type, errors
by kind, settle p50/p99, jobs left unsettled after a bounded drain, the invariants
and the login cost, with verdicts (``locust-rate-<date>.json`` in ``loadtest/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from loadtest import rate_run
from loadtest.seed import fund, seed_population
from loadtest.stack import ROOT, MemorySampler, Stack, StackOptions

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.run_locust", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("full", "short", "rate"), default="full",
                        help="LOAD_PROFILE (full: ~10 min by user count; rate: ~6.5 min by arrival rate)")
    parser.add_argument("--scale", type=float, default=1.0, help="LOAD_SCALE: multiplies every phase's users")
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--web-threads", type=int, default=32,
                        help="threads per gunicorn worker with WEB_WORKER_CLASS=gthread only; the default "
                             "gevent worker holds no thread per 'Prefer: wait' (default 32)")
    parser.add_argument("--worker-concurrency", type=int, default=1)
    parser.add_argument("--users", type=int, default=1000, help="seeded users, split over the tiers")
    parser.add_argument("--keep", action="store_true")
    rate_run.add_arguments(parser)
    args = parser.parse_args(argv)
    rate_run.apply_quick(args)

    stamp = datetime.now().strftime("%Y-%m-%dT%H%M%S")
    prefix = RESULTS / f"locust-{stamp}"
    stack = Stack(StackOptions(web_workers=args.web_workers, web_threads=args.web_threads,
                               worker_concurrency=args.worker_concurrency, keep=args.keep))
    code = 1
    try:
        stack.start_stores()
        from infra.config import get_settings
        from infra.mongo import get_db
        from loadtest.bench import _kick_all, check_invariants
        from tasks.settle import ring

        db = get_db()
        stack.start_workers()
        web = stack.start_web()
        sampler = MemorySampler(stack).start()
        n = args.users
        pop = seed_population(db, free=int(n * 0.55), premium=int(n * 0.35), creators=max(5, int(n * 0.1)))
        fund(db, [u.id for u in pop.payers], 1_000_000, partitions=get_settings().ledger_partitions, ring=ring,
             kick=_kick_all)
        manifest = pop.write(stack.tmp / "manifest.json")
        env = {**os.environ, "LOADTEST_MANIFEST": str(manifest), "LOAD_PROFILE": args.profile,
               "LOAD_SCALE": str(args.scale), **rate_run.locust_env(args, stack.tmp / "phases.json")}
        command = [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless",
                   "--host", web.base_url, "--csv", str(prefix), "--html", f"{prefix}.html",
                   "--only-summary", "--loglevel", "WARNING"]
        print(f"run_locust: {' '.join(command)}", flush=True)
        started = time.perf_counter()
        watch = rate_run.Watch(args, stack, prefix)
        code = subprocess.run(command, env=env, cwd=ROOT).returncode
        print(f"run_locust: locust exited {code} after {time.perf_counter() - started:.0f} s", flush=True)
        unsettled = rate_run.bounded_drain(db) if args.profile == "rate" else None
        invariants = check_invariants(db)
        peaks = sampler.stop()
        print("run_locust: peak RSS MiB " + ", ".join(f"{k} {v / 2**20:.0f}" for k, v in peaks.items()))
        print(f"run_locust: invariants {invariants}")
        if not invariants.get("ok"):
            code = 1
        if args.profile == "rate":
            report = rate_run.report(args, stack.tmp / "phases.json", unsettled, invariants, peaks, watch)
            Path(f"{prefix}-rate.json").write_text(json.dumps(report, indent=1, default=str))
            print(report["table"])
            print(f"run_locust: rate report {prefix}-rate.json")
        print(f"run_locust: reports {prefix}_stats.csv, {prefix}.html")
    finally:
        stack.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
