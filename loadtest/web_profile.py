"""``python -m loadtest.web_profile``: what one accepted request costs the web process (issue 24, lever 6).

One gunicorn worker process, no ledger workers (nothing settles, so the web process
and the store serve the accept path alone), stores of its own. ``--threads`` clients
post the bench's money mix (transfers, unlocks, gifts; fresh ``Idempotency-Key``
each) from returning users back to back for ``--seconds``. Reported:

- web CPU ms per accepted request: the web process tree's CPU seconds (user + system,
  psutil) over the window ÷ the 202s in it; the store's and the client's beside it;
- where that CPU goes: a ``py-spy`` recording of the web process over the same window,
  as self and inclusive sample shares per function (``loadtest.profiling``).

Run it before and after a change to the web path, on the same machine in the same
hour: the ratio is the result, the absolute milliseconds move with the machine.
Writes ``loadtest/results/web-profile-<stamp>[-label].json``.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtest.common import CpuMeter, Http, MoneyMix, closed_loop, log, log_as
from loadtest.http_stages import hot_population
from loadtest.profiling import pyspy_start, summarize_collapsed
from loadtest.seed import seed_population
from loadtest.stack import Stack, StackOptions

RESULTS = Path(__file__).resolve().parent / "results"


def measure(stack: Stack, http: Http, mix: MoneyMix, *, threads: int, seconds: float, warmup: float,
            spy_out: Path | None) -> dict[str, Any]:
    """One closed-loop window: accepted/s, CPU per group, web CPU ms per 202, and the web profile."""
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def send() -> bool:
        intent = mix.next()
        path, body = mix.http(intent)
        status, _ = http.post_money(intent.payer, path, body)
        with lock:
            statuses[status] += 1
        return status == 202

    meter: CpuMeter | None = None
    recorder = None

    def start_window() -> None:
        nonlocal meter, recorder
        meter = CpuMeter(stack).start()
        assert stack.web is not None and stack.web.pid is not None
        if spy_out is not None:
            recorder = pyspy_start(stack.web.pid, seconds, spy_out, subprocesses=True)

    loop = closed_loop(send, threads, seconds, warmup, on_window=start_window)
    assert meter is not None
    cores = meter.stop()
    if recorder is not None:
        recorder.wait(timeout=seconds + 30)
    accepted = loop["ok"]
    ms_per = {name: round(used * loop["seconds"] * 1000 / accepted, 2) if accepted else None
              for name, used in cores.items()}
    return {"accepted": accepted, "accepted_per_s": loop["ok_per_s"], "failed": loop["failed"],
            "statuses": dict(statuses), "cores": cores, "cpu_ms_per_accepted": ms_per,
            "web_cpu_ms_per_accepted": ms_per.get("web"),
            "profile": summarize_collapsed(spy_out, top=20) if spy_out is not None else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="measured windows (the profile is of the last)")
    parser.add_argument("--label", default="", help="suffix of the results file (e.g. before, after)")
    args = parser.parse_args(argv)
    log_as("web-profile")
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%S")
    with Stack(StackOptions(web_workers=1)) as stack:
        stack.start_stores()
        from api.auth import issue_token
        from infra.config import get_settings
        from infra.mongo import get_db

        settings, db = get_settings(), get_db()
        pop = seed_population(db, free=200, premium=100, creators=20)
        stack.start_web()
        assert stack.web is not None
        tokens = {u.id: issue_token(settings, u.id, u.role)[0] for u in pop.users}
        http = Http(stack.web.base_url, tokens)
        mix = MoneyMix(hot_population(pop), seed=3)
        rounds = []
        for n in range(args.rounds):
            spy = RESULTS / f"web-profile-{stamp}.collapsed" if n == args.rounds - 1 else None
            rounds.append(measure(stack, http, mix, threads=args.threads, seconds=args.seconds,
                                  warmup=args.warmup, spy_out=spy))
            log(f"round {n + 1}: {rounds[-1]['accepted_per_s']} accepted/s, "
                f"web {rounds[-1]['web_cpu_ms_per_accepted']} CPU ms per 202")
    web_ms = sorted(r["web_cpu_ms_per_accepted"] for r in rounds if r["web_cpu_ms_per_accepted"] is not None)
    result = {"stamp": stamp, "label": args.label, "threads": args.threads, "seconds": args.seconds,
              "web_cpu_ms_per_accepted_median": web_ms[len(web_ms) // 2] if web_ms else None, "rounds": rounds}
    suffix = f"-{args.label}" if args.label else ""
    out = RESULTS / f"web-profile-{stamp}{suffix}.json"
    out.write_text(json.dumps(result, indent=2, default=str))
    profile = rounds[-1]["profile"] or {}
    for kind in ("self", "inclusive"):
        log(f"{kind}: " + "; ".join(f"{f} {s}" for f, s in profile.get(kind, [])[:15]))
    log(f"web CPU ms per accepted request (median of {len(web_ms)}): {result['web_cpu_ms_per_accepted_median']}; "
        f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
