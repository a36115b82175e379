"""The arrival-rate load profile: its phases, the user pool it needs, and its per-phase report.

Pure (no locust, no store): ``loadtest.rate_feed`` drives locust with it and
``loadtest.run_locust --profile rate`` writes the report. The target is total HTTP
requests per second across every request type; the locustfile's scenarios send one
to two HTTP requests per task, so arrivals are generated per task at
``rate / requests_per_task()``. Requests are bucketed into the phase in which they
*started* (a settle row starts with its POST), so a slow answer at a phase boundary
counts against the phase that offered it.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

WEIGHTS = {"health": 10, "auth": 15, "wallet": 20, "unlock": 25, "subscription": 15, "gifts": 15}
# HTTP requests per task when the job's first ``Prefer: wait=10`` sees it terminal; wallet
# is 40 % balance, 30 % history (one request each), 30 % transfer (POST + wait).
REQUESTS_PER_TASK = {"health": 1.0, "auth": 1.0, "wallet": 0.7 + 0.3 * 2, "unlock": 2.0,
                     "subscription": 2.0, "gifts": 2.0}
LONG_POLL = "/api/jobs/[id] (Prefer: wait=10)"  # its time is the wait for settlement: judged as ``settle``
DRAIN = "drain"  # requests started after the last phase (second polls of late jobs)
TAIL_SECONDS = 15.0  # > Prefer: wait=10, so jobs offered at the very end are seen settled

P95_MS, P99_MS, SETTLE_P99_MS = 500.0, 1000.0, 1000.0
RATE_HELD = 0.95  # achieved >= 95 % of the target, or the latencies were measured on less load
LATE_S = 1.0  # an arrival that waited this long for a free user is late (the pool was too small)


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    rate: float  # target HTTP requests/s
    judged: bool = True


PHASES = (Phase("warm-up", 30, 20, judged=False), Phase("sustained", 300, 100), Phase("spike", 60, 200))


def plan(rate_scale: float = 1.0, duration_scale: float = 1.0,
         phases: Sequence[Phase] = PHASES) -> list[Phase]:
    """The phases with rates and durations scaled; the warm-up keeps at least 10 s (the pool logs in)."""
    scaled = []
    for p in phases:
        seconds = p.seconds * duration_scale
        scaled.append(Phase(p.name, max(10.0, seconds) if not p.judged else max(1.0, seconds),
                            max(0.5, p.rate * rate_scale), p.judged))
    return scaled


def requests_per_task(weights: dict[str, int] = WEIGHTS,
                      per_task: dict[str, float] = REQUESTS_PER_TASK) -> float:
    total = sum(weights.values())
    return sum(w * per_task[name] for name, w in weights.items()) / total


def task_rate(phase: Phase) -> float:
    """Task arrivals per second that give the phase's HTTP request rate."""
    return phase.rate / requests_per_task()


def pool_size(phases: Sequence[Phase], headroom_s: float) -> int:
    """Users needed so that arrivals at the peak rate find a free user while tasks take
    up to ``headroom_s`` on average (Little's law: busy users = task rate x task time)."""
    return max(1, math.ceil(max(task_rate(p) for p in phases) * headroom_s))


def total_seconds(phases: Sequence[Phase]) -> float:
    return sum(p.seconds for p in phases)


def phase_at(phases: Sequence[Phase], offset: float) -> str:
    """The name of the phase running ``offset`` seconds after the start (``drain`` after the end)."""
    if offset < 0:
        return phases[0].name
    for p in phases:
        if offset < p.seconds:
            return p.name
        offset -= p.seconds
    return DRAIN


_IDS = re.compile(r"[0-9a-f]{16,}")


def error_kind(message: str) -> str:
    """A failure message without its ids, short enough to count kinds."""
    return _IDS.sub("<id>", message.strip())[:100]


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _latency(values: Iterable[float]) -> dict[str, Any]:
    ordered = sorted(values)
    return {"count": len(ordered), **{f"p{q}": _ms(percentile(ordered, q)) for q in (50, 95, 99)},
            "max": _ms(ordered[-1] if ordered else None)}


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class PhaseRecorder:
    """Requests and arrivals bucketed by the phase they started in (offsets in seconds from the start)."""

    phases: Sequence[Phase]
    times: dict[tuple[str, str, str], list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[tuple[str, str, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    offered: Counter[str] = field(default_factory=Counter)
    lags: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def request(self, started: float, request_type: str, name: str, response_ms: float,
                error: str | None = None) -> None:
        key = (phase_at(self.phases, started), request_type, name)
        self.times[key].append(response_ms)
        if error is not None:
            self.errors[key][error_kind(error)] += 1

    def arrival_offered(self, scheduled: float) -> None:
        self.offered[phase_at(self.phases, scheduled)] += 1

    def arrival_taken(self, scheduled: float, lag_s: float) -> None:
        self.lags[phase_at(self.phases, scheduled)].append(lag_s)

    def summary(self) -> list[dict[str, Any]]:
        """One entry per phase (and ``drain`` when anything started after the end)."""
        names = [p.name for p in self.phases]
        if any(key[0] == DRAIN for key in self.times):
            names.append(DRAIN)
        by_name = {p.name: p for p in self.phases}
        return [self._phase(name, by_name.get(name)) for name in names]

    def _phase(self, name: str, phase: Phase | None) -> dict[str, Any]:
        rows, kinds = [], Counter()
        http = 0
        for (phase_name, request_type, req_name), values in sorted(self.times.items()):
            if phase_name != name:
                continue
            errs = self.errors.get((phase_name, request_type, req_name), Counter())
            kinds.update(errs)
            rows.append({"type": request_type, "name": req_name, **_latency(values), "errors": sum(errs.values())})
            if request_type != "settle":
                http += len(values)
        settle = _latency(v for (p, t, _n), vs in self.times.items() if p == name and t == "settle" for v in vs)
        lags = sorted(self.lags.get(name, []))
        out: dict[str, Any] = {"phase": name, "rows": rows, "http_requests": http, "settle": settle,
                               "errors": sum(kinds.values()), "error_kinds": dict(kinds.most_common()),
                               "arrivals": {"offered": self.offered.get(name, 0), "taken": len(lags),
                                            "late": sum(1 for x in lags if x > LATE_S),
                                            "lag_p99_s": _round(percentile(lags, 99)),
                                            "lag_max_s": _round(lags[-1] if lags else None)}}
        if phase is not None:
            out.update(seconds=phase.seconds, target_rate=phase.rate, judged=phase.judged,
                       achieved_rate=round(http / phase.seconds, 1))
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def phase_verdicts(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The checks of one judged phase: rate held, p95/p99 per HTTP type, 0 errors, settle p99."""
    checks = [_check("rate held", entry.get("achieved_rate"), RATE_HELD * entry.get("target_rate", 0), ">=")]
    for row in entry["rows"]:
        if row["type"] == "settle" or row["name"] == LONG_POLL:
            continue
        label = f"{row['type']} {row['name']}"
        checks.append(_check(f"p95 {label}", row["p95"], P95_MS, "<"))
        checks.append(_check(f"p99 {label}", row["p99"], P99_MS, "<"))
    checks.append(_check("errors", entry["errors"], 0, "=="))
    checks.append(_check("settle p99", entry["settle"]["p99"], SETTLE_P99_MS, "<"))
    return checks


def _check(what: str, value: float | None, bound: float, op: str) -> dict[str, Any]:
    if value is None:
        ok = op == "<"  # nothing of that kind measured: no latency over the bound
    elif op == "<":
        ok = value < bound
    elif op == ">=":
        ok = value >= bound
    else:
        ok = value == bound
    return {"check": what, "value": value, "bound": f"{op} {bound:g}", "ok": ok}


def verdicts(phases: Sequence[dict[str, Any]], unsettled: int | None, invariants_ok: bool) -> dict[str, Any]:
    """Every judged phase's checks, plus every job settled and the money invariants."""
    out: dict[str, Any] = {e["phase"]: phase_verdicts(e) for e in phases if e.get("judged")}
    out["run"] = [_check("jobs not terminal after the drain", unsettled, 0, "=="),
                  {"check": "money invariants", "value": invariants_ok, "bound": "hold", "ok": invariants_ok}]
    out["ok"] = all(c["ok"] for checks in out.values() if isinstance(checks, list) for c in checks)
    return out


def format_report(phases: Sequence[dict[str, Any]], verdict: dict[str, Any]) -> str:
    """A plain-text table per phase with PASS/MISS against the targets (judged phases only)."""
    lines = []
    for entry in phases:
        lines.extend(_phase_lines(entry, verdict.get(entry["phase"])))
    for check in verdict["run"]:
        lines.append(f"{check['check']}: {check['value']} ({check['bound']}) {_word(check['ok'])}")
    lines.append(f"overall: {_word(verdict['ok'])}")
    return "\n".join(lines)


def _phase_lines(entry: dict[str, Any], checks: list[dict[str, Any]] | None) -> list[str]:
    arrivals = entry["arrivals"]
    head = f"== {entry['phase']}"
    if "target_rate" in entry:
        head += (f": target {entry['target_rate']:g} req/s, achieved {entry['achieved_rate']:g} over "
                 f"{entry['seconds']:g} s" + ("" if entry["judged"] else " (not judged)"))
    head += (f"; tasks offered {arrivals['offered']}, late {arrivals['late']}"
             f" (lag p99 {arrivals['lag_p99_s']} s); errors {entry['errors']}")
    lines = [head, f"  {'type':<7}{'name':<44}{'count':>7}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'err':>5}  verdict"]
    failed = {c["check"] for c in checks or [] if not c["ok"]}
    for row in entry["rows"]:
        label = f"{row['type']} {row['name']}"
        if checks is None or row["type"] == "settle" or row["name"] == LONG_POLL:
            word = ""
        else:
            word = "MISS" if {f"p95 {label}", f"p99 {label}"} & failed else "PASS"
        lines.append(f"  {row['type']:<7}{row['name'][:43]:<44}{row['count']:>7}{_cell(row['p50'])}"
                     f"{_cell(row['p95'])}{_cell(row['p99'])}{_cell(row['max'])}{row['errors']:>5}  {word}")
    settle = entry["settle"]
    lines.append(f"  settle (all): {settle['count']} jobs, p50 {settle['p50']} ms, p99 {settle['p99']} ms")
    for kind, count in entry["error_kinds"].items():
        lines.append(f"  error x{count}: {kind}")
    for check in checks or []:
        if not check["ok"] and not check["check"].startswith(("p95 ", "p99 ")):
            lines.append(f"  MISS {check['check']}: {check['value']} ({check['bound']})")
    return lines


def _cell(value: float | None) -> str:
    return f"{'-' if value is None else f'{value:.0f}':>8}"


def _word(ok: bool) -> str:
    return "PASS" if ok else "MISS"
