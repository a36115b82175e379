"""The arrival-rate profile's pure parts: phases, pool sizing, per-phase bucketing, verdicts."""

from __future__ import annotations

import pytest

from loadtest.rate_plan import (
    DRAIN,
    LONG_POLL,
    Phase,
    PhaseRecorder,
    format_report,
    phase_at,
    plan,
    pool_size,
    requests_per_task,
    task_rate,
    verdicts,
)

PHASES = [Phase("warm-up", 10, 5, judged=False), Phase("sustained", 20, 10), Phase("spike", 5, 20)]


def test_requests_per_task_follows_the_weights() -> None:
    # 100 tasks: health 10 + auth 15 + wallet 20 x 1.3 + (unlock 25 + subscription 15 + gifts 15) x 2
    assert requests_per_task() == pytest.approx(1.61)
    assert task_rate(Phase("x", 1, 161)) == pytest.approx(100)


def test_plan_scales_rates_and_durations_and_keeps_a_warm_up() -> None:
    full = plan()
    assert [(p.name, p.seconds, p.rate, p.judged) for p in full] == [
        ("warm-up", 30, 20, False), ("sustained", 300, 100, True), ("spike", 60, 200, True)]
    quick = plan(0.25, 0.2)
    assert [(p.seconds, p.rate) for p in quick] == [(10, 5), (60, 25), (12, 50)]
    # Little's law at the peak: 200 req/s is 124.2 tasks/s, 4 s each on average
    assert pool_size(full, 4) == 497


@pytest.mark.parametrize(("offset", "name"), [
    (-1, "warm-up"), (0, "warm-up"), (9.99, "warm-up"), (10, "sustained"), (29.9, "sustained"),
    (30, "spike"), (34.9, "spike"), (35, DRAIN), (100, DRAIN)])
def test_phase_at_the_boundaries(offset: float, name: str) -> None:
    assert phase_at(PHASES, offset) == name


def _recorder() -> PhaseRecorder:
    rec = PhaseRecorder(PHASES)
    for i in range(100):  # sustained: 100 balance reads of 1..100 ms, 5 req/s over 20 s
        rec.request(10 + i * 0.2, "GET", "/api/wallet/balance", float(i + 1))
    # a gift POSTed just before the spike, its settlement seen in the spike: the sustained phase's
    rec.request(29.5, "POST", "/api/gifts", 40.0)
    rec.request(29.54, "GET", LONG_POLL, 2000.0)
    rec.request(29.5, "settle", "gift", 2040.0)
    rec.request(31, "POST", "/api/auth/login", 1500.0, "login 503")
    rec.request(32, "POST", "/api/gifts", 20.0, "503: job 65a1b2c3d4e5f60718293a4b refused")
    rec.request(33, "POST", "/api/gifts", 20.0, "503: job 75a1b2c3d4e5f60718293a4b refused")
    rec.request(36, "GET", LONG_POLL, 10.0)
    for at, lag in ((12.0, 0.0), (31.0, 0.1), (32.0, 2.5)):
        rec.arrival_offered(at)
        rec.arrival_taken(at, lag)
    return rec


def test_requests_are_bucketed_by_the_phase_they_started_in() -> None:
    phases = {p["phase"]: p for p in _recorder().summary()}
    assert list(phases) == ["warm-up", "sustained", "spike", DRAIN]
    sustained = phases["sustained"]
    rows = {(r["type"], r["name"]): r for r in sustained["rows"]}
    balance = rows[("GET", "/api/wallet/balance")]
    assert (balance["count"], balance["p50"], balance["p95"], balance["p99"], balance["max"]) == (100, 50, 95, 99, 100)
    assert rows[("settle", "gift")]["count"] == 1
    # settle rows are not HTTP requests: 100 reads + 1 POST + 1 poll over 20 s
    assert sustained["http_requests"] == 102
    assert sustained["achieved_rate"] == 5.1
    assert sustained["settle"]["p99"] == 2040.0
    assert sustained["errors"] == 0
    spike = phases["spike"]
    assert spike["errors"] == 3
    # the two refusals differ only in their job id: one kind
    assert spike["error_kinds"] == {"503: job <id> refused": 2, "login 503": 1}
    assert spike["arrivals"] == {"offered": 2, "taken": 2, "late": 1, "lag_p99_s": 2.5, "lag_max_s": 2.5}
    assert phases[DRAIN]["http_requests"] == 1 and "judged" not in phases[DRAIN]


def test_verdicts_judge_each_request_type_but_not_the_long_poll() -> None:
    summary = _recorder().summary()
    verdict = verdicts(summary, unsettled=0, invariants_ok=True)
    assert set(verdict) == {"sustained", "spike", "run", "ok"}  # the warm-up and the drain are not judged
    sustained = {c["check"]: c["ok"] for c in verdict["sustained"]}
    assert sustained["p99 GET /api/wallet/balance"] is True
    assert not any(LONG_POLL in check for check in sustained)  # its 2 s is the settlement, judged below
    assert sustained["settle p99"] is False
    assert sustained["rate held"] is False  # 5.1 of 10 req/s
    spike = {c["check"]: c["ok"] for c in verdict["spike"]}
    assert spike["p95 POST /api/auth/login"] is False
    assert spike["errors"] is False
    assert spike["settle p99"] is True  # no job settled in it: nothing over the bound
    assert verdict["ok"] is False
    table = format_report(summary, verdict)
    assert "MISS settle p99: 2040.0 (< 1000)" in table
    assert "error x2: 503: job <id> refused" in table
    assert "overall: MISS" in table


def test_the_run_checks_every_job_settled_and_the_invariants() -> None:
    rec = PhaseRecorder(PHASES)
    for phase_start, rate, seconds in ((10, 10, 20), (30, 20, 5)):
        for i in range(rate * seconds):
            rec.request(phase_start + i / rate, "GET", "/api/health", 5.0)
    assert verdicts(rec.summary(), unsettled=0, invariants_ok=True)["ok"] is True
    left = verdicts(rec.summary(), unsettled=3, invariants_ok=True)
    assert left["ok"] is False and left["run"][0]["value"] == 3
    assert verdicts(rec.summary(), unsettled=0, invariants_ok=False)["ok"] is False
