"""Chaos during payouts and refunds (issue 14): SIGKILL, Redis and SecantusDB restarts.

Each scenario runs the whole stack as real processes (gunicorn, a ledger worker, the
housekeeping worker that submits payouts and runs the payout tick, a beat that ticks
the sweeper and the payout tick every second) and the payout provider simulator
(devstack/provider_sim.py) as its own HTTP process, which pays each payout a second
after accepting it (fails amounts ending in 13) and calls ``POST /api/payments/events``.

Client threads keep a money-out mix going over HTTP while the fault strikes:
creators request payouts (some ending in 13), an admin sends partial, concurrent
refunds of gifts and unlocks settled beforehand (several threads pick the same few
originals), fans keep gifting and unlocking, the provider keeps topping up. Clients
retry with the same Idempotency-Key after a 5xx, a transport error or a 409.

After recovery every payout must have reached a terminal state, and then:

* every accepted job is settled or failed exactly once (chaoskit.outcome: nothing
  lost, nothing doubled, every balance follows from what the clients were told,
  payouts, refunds and the provider's payout events included; money invariants and
  reconcile clean, audit chains verify);
* the simulator holds one record per payout and each payout id is paid there at most
  once; Purser's payout and the simulator agree (paid <=> paid, failed <=> failed),
  exactly one transition applied per payout, and no coin is still held;
* for each refunded original the refunds' sum stays within its amount and equals
  what the original's view reports.

Each scenario also shows its fault took effect, so it cannot pass vacuously.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import requests

from devstack.ports import free_port
from devstack.provider_sim import ProviderSimProcess
from ledger.money import EXTERNAL_FUNDING, PAYOUTS_IN_FLIGHT, PLATFORM_PROCESSING
from tests.chaos.chaoskit import (
    Attempted,
    ChaosStack,
    Load,
    Scale,
    World,
    build_world,
    drain,
    kill_pool_children_mid_task,
    outcome,
    payouts_done,
    probe_for,
    sweeper_env,
)
from tests.support.client import ApiClient, Response
from tests.support.load import Sent, Tally, fire, fund
from tests.support.seeding import User, seed_users

# Runs in `make test-all` (CI) and `make chaos`, not in `make test` (no smoke marker).
pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(900)]

REFUNDS = "/api/admin/refunds"
PAYOUTS = "/api/payouts"
MONEY_OUT = ("payout", "payout_event", "refund")
# The payout tick every second, resolving anything in doubt after 2 s, so a submission
# lost with Redis or a provider event lost to an outage is caught up within seconds.
PAYOUT_ENV = {"PAYOUT_TICK_SECONDS": "1", "PAYOUT_RESOLVE_AFTER_SECONDS": "2", "PROVIDER_SIM_DELAY_SECONDS": "1"}
CREATOR_FUNDS = 400_000


def money_out_scale(scale: Scale) -> Scale:
    """The chaos scale with its windows capped (warm-up and after 4 s, a 6 s outage, 3 mid-task
    kills, 6 clients) so the three scenarios fit 4 minutes on 2 cores at full scale too, where
    the SIGKILL scenario may also wait out SecantusDB's 60 s reaping of a killed transaction.
    A 6 s outage still outlasts pymongo's 5 s server selection: requests and the simulator's
    events fail during it and are retried."""
    return replace(scale, warmup=min(scale.warmup, 4.0), after=min(scale.after, 4.0), kills=min(scale.kills, 3),
                   outage=min(scale.outage, 6.0), clients=min(scale.clients, 6))


# ------------------------------------------------------------------------------ simulator


@dataclass
class Sim:
    process: ProviderSimProcess

    def record(self, payout_id: str) -> dict[str, Any] | None:
        """The simulator's record of ``payout_id`` (``GET /payouts/<id>``), None when it has none."""
        r = requests.get(f"{self.process.url}/payouts/{payout_id}", timeout=10)
        assert r.status_code in (200, 404), r.text
        return r.json() if r.status_code == 200 else None

    def log(self) -> str:
        return self.process.log_tail(lines=100_000, since_start=False)

    def webhook_retries(self) -> int:
        """Provider events the simulator had to send again (Purser down or answering 5xx)."""
        return len(re.findall(r"event \w+ for \w+ (?:not delivered|answered 5\d\d)", self.log()))


# ------------------------------------------------------------------------------ accounting


class MoneyOutTally(Tally):
    """A Tally that also recomputes balances from payouts, refunds and payout events."""

    def expected_balances(self) -> Counter:
        base = Tally(jobs={j: s for j, s in self.jobs.items() if s.kind not in MONEY_OUT},
                     told={j: v for j, v in self.told.items() if self.jobs[j].kind not in MONEY_OUT})
        balances = base.expected_balances()
        for job_id, view in self.told.items():
            sent = self.jobs[job_id]
            if sent.kind not in MONEY_OUT or view["status"] != "settled":
                continue
            assert view["type"] == sent.kind, (view, sent)
            result = view["result"]
            amount = result["amount"]
            if sent.kind == "payout":  # the hold
                balances[sent.payer] -= amount
                balances[PAYOUTS_IN_FLIGHT] += amount
            elif sent.kind == "payout_event":
                if result["status"] == "paid":  # post: the coins leave for the bank
                    balances[PAYOUTS_IN_FLIGHT] -= amount
                    balances[EXTERNAL_FUNDING] += amount
                elif result["status"] in ("failed", "expired"):  # void: back to the user
                    balances[PAYOUTS_IN_FLIGHT] -= amount
                    balances[sent.payer] += amount
                else:  # pragma: no cover - the simulator returns nothing here
                    raise AssertionError(f"unexpected payout transition {result}")
            else:  # refund: each leg gives back its share, the payer gets what was refunded
                kept = amount - result["refunded"]
                assert sum(result["legs"].values()) == amount, view
                for wallet, share in result["legs"].items():
                    if not (kept and wallet == PLATFORM_PROCESSING):
                        balances[wallet] -= share
                balances[result["refundedTo"]] += result["refunded"]
        return balances


@dataclass(frozen=True)
class Original:
    job_id: str
    kind: str  # gift or unlock
    amount: int
    payer: str


# ------------------------------------------------------------------------------ load


class MoneyOutLoad(Load):
    """Payouts, admin refunds of a few hot originals, gifts, unlocks and provider top-ups."""

    WEIGHTS = (("payout", 30), ("refund", 35), ("gift", 15), ("unlock", 10), ("topup", 10))

    def __init__(self, http: ApiClient, tally: Tally, world: World, admin: User, originals: list[Original],
                 clients: int, think: float, seed: int = 14) -> None:
        super().__init__(http, tally, world, clients, seed=seed, think=think)
        self.admin = admin
        self.originals = originals
        self.hot = originals[: max(4, len(originals) // 4)]  # where concurrent refunds collide

    def _make(self) -> Attempted:
        with self.rng_lock:
            kinds, weights = zip(*self.WEIGHTS, strict=True)
            kind = self.rng.choices(kinds, weights)[0]
            fan = self.rng.choice(self.world.fans)
            creator = self.rng.choice(self.world.creators)
            content = self.rng.choice(self.world.contents)
            original = self.rng.choice(self.hot if self.rng.random() < 0.7 else self.originals)
            refund_amount = None if self.rng.random() < 0.05 else self.rng.randint(1, 15)
            reason = self.rng.choice(("duplicate", "requested_by_customer"))
            ends_in_13 = self.rng.random() < 0.3
            payout_amount = self.rng.randint(10, 19) * 100 + (13 if ends_in_13 else self.rng.choice(
                [c for c in range(100) if c != 13]))
            small = self.rng.randint(20, 120)
        key = uuid.uuid4().hex
        http = self.http
        if kind == "payout":
            return Attempted(kind, creator.id, key,
                             lambda: http.money(PAYOUTS, creator, {"amount": payout_amount}, key))
        if kind == "refund":
            body: dict[str, Any] = {"jobId": original.job_id, "reason": reason}
            if refund_amount is not None:
                body["amount"] = refund_amount
            admin = self.admin
            return Attempted(kind, admin.id, key, lambda: http.money(REFUNDS, admin, body, key))
        if kind == "gift":
            body = {"creatorId": creator.id, "amount": small}
            return Attempted(kind, fan.id, key, lambda: http.money("/api/gifts", fan, body, key))
        if kind == "unlock":
            body = {"contentId": content}
            return Attempted(kind, fan.id, key, lambda: http.money("/api/premium/unlock", fan, body, key))
        ptx = f"ptx-{key}"
        return Attempted("topup", fan.id, f"provider:{ptx}", lambda: http.webhook(fan.id, small * 10, ptx))


# ------------------------------------------------------------------------------ the run


@dataclass
class MoneyOut:
    stack: ChaosStack
    db: Any
    http: ApiClient
    tally: MoneyOutTally
    world: World
    admin: User
    originals: list[Original]
    sim: Sim
    load: MoneyOutLoad
    scale: Scale
    started: float
    facts: dict[str, Any] = field(default_factory=dict)


def _originals(db: Any, http: ApiClient, tally: Tally, world: World) -> list[Original]:
    """Every fan gifts a creator and unlocks a content; the settled ones are refundable."""
    rng = random.Random(7)
    plan = []
    for fan in world.fans:
        plan.append(("gift", fan, "/api/gifts", {"creatorId": rng.choice(world.creators).id,
                                                  "amount": rng.randint(100, 250)}))
        plan.append(("unlock", fan, "/api/premium/unlock", {"contentId": rng.choice(world.contents)}))

    def send(item: tuple[str, User, str, dict[str, Any]]) -> Sent:
        kind, fan, path, body = item
        key = uuid.uuid4().hex
        return tally.add(Sent(kind, fan.id, key, http.money(path, fan, body, key)))

    sent = fire(send, plan, workers=8)
    assert all(s.accepted for s in sent), [s.reply for s in sent if not s.accepted][:3]
    drain(db)
    jobs = {j["_id"]: j for j in db.jobs.find({"_id": {"$in": [s.job_id for s in sent]}})}
    originals = [Original(s.job_id, s.kind, jobs[s.job_id]["result"]["amount"], s.payer) for s in sent
                 if jobs[s.job_id]["status"] == "settled"]
    assert len(originals) >= len(world.fans), "too few settled gifts and unlocks to refund"
    random.Random(11).shuffle(originals)
    return originals


def start_money_out(chaos: Any, scale: Scale, *, workers: int = 1) -> MoneyOut:
    """The stack, the simulator, a funded world with refundable originals, and the load warmed up."""
    started = time.monotonic()
    stack, db = chaos
    sim_port = free_port()
    env = {**PAYOUT_ENV, "PAYOUT_PROVIDER_URL": f"http://127.0.0.1:{sim_port}"}
    stack.start(web=env, worker=env, beat=sweeper_env(env), workers=workers)
    assert stack.web is not None
    process = ProviderSimProcess(stack.env(env), stack.logs / "provider-sim.log", stack.web.base_url, port=sim_port)
    stack.processes.append(process)  # stopped with the stack
    process.start(timeout=30)
    sim = Sim(process)

    http, tally = stack.http, MoneyOutTally()
    world = build_world(db, http, tally, scale)
    creators = seed_users(db, max(1, scale.users // 12), "creator", "payee")
    world.creators.extend(creators)
    fund(http, tally, world.creators, CREATOR_FUNDS)
    [admin] = seed_users(db, 1, "admin", "ops")
    world.users = {u.id: u for u in world.fans + world.creators + [admin]}
    originals = _originals(db, http, tally, world)
    setup_s = round(time.monotonic() - started, 1)
    load = MoneyOutLoad(http, tally, world, admin, originals, scale.clients, think=scale.think).start()
    load.run_for(scale.warmup)
    return MoneyOut(stack, db, http, tally, world, admin, originals, sim, load, scale, started,
                    facts={"setup_s": setup_s})


def tick_totals(stack: ChaosStack) -> dict[str, int]:
    """What the payout ticks did, from the housekeeping workers' JSON logs."""
    totals: Counter = Counter()
    for proc in stack.housekeepers:
        for line in stack.log_text(proc).splitlines():
            if '"payout tick done"' not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            totals["submitted"] += entry.get("submitted", 0)
            totals["resolved"] += entry.get("resolved", 0)
            totals["provider_down"] += bool(entry.get("providerDown"))
    return {f"payout_tick_{k}": v for k, v in sorted(totals.items())}


def finish_money_out(run: MoneyOut, *, scenario: str, recovered_at: float, strikes: dict[str, Any]) -> dict[str, Any]:
    """Drain, wait for every payout to end, account for every job, then the money-out checks."""
    db, tally = run.db, run.tally
    stopping = time.monotonic()
    run.load.stop()
    stopped = time.monotonic()
    drain(db)
    drained = time.monotonic()
    resolved = run.load.resolve()  # requests still without a definite answer, retried to the end
    run.facts.update({"load_stop_s": round(stopped - stopping, 1), "drain_s": round(drained - stopped, 1),
                      "resolved_late": resolved, "resolve_s": round(time.monotonic() - drained, 1)})
    # Payouts end outside the queue: the simulator pays after its delay and calls back (retrying
    # while Purser is down); the payout tick resubmits holds whose submission was lost.
    payouts_started = time.monotonic()
    assert probe_for(lambda: payouts_done(db), timeout=150, poll=0.5), (
        f"{scenario}: payouts not all terminal: "
        f"{Counter(d['status'] for d in db.payouts.find({}, {'status': 1}))}")
    payouts_s = round(time.monotonic() - payouts_started, 1)
    # The provider's events are jobs no client was told about: add them, as renewals are.
    for job in db.jobs.find({"type": "payout_event"}, {"ownerId": 1, "idempotencyKey": 1}):
        reply = Response(202, {}, b'{"jobId": "%s"}' % job["_id"].encode())
        tally.jobs.setdefault(job["_id"], Sent("payout_event", job["ownerId"], job["idempotencyKey"], reply))
    row = outcome(db, run.http, tally, run.world, run.load, scenario=scenario, scale=run.scale,
                  recovered_at=recovered_at, strikes=strikes, started_at=run.started)
    row["money_out"] = {**run.facts, **check_payouts(run), **check_refunds(run),
                        "payouts_terminal_after_load_s": payouts_s,
                        "provider_webhook_retries": run.sim.webhook_retries(), **tick_totals(run.stack)}
    row["duration_s"] = round(time.monotonic() - run.started, 1)
    row["scale_used"] = run.scale.as_dict()
    return row


def check_payouts(run: MoneyOut) -> dict[str, Any]:
    """Purser's payouts against the simulator's records: one paid payout per request at most."""
    db, tally, sim = run.db, run.tally, run.sim
    requested = {j: s for j, s in tally.jobs.items() if s.kind == "payout"}
    docs = {d["_id"]: d for d in db.payouts.find({})}
    assert set(docs) <= set(requested), f"payouts no client asked for: {sorted(set(docs) - set(requested))[:5]}"
    records = dict(zip(sorted(requested), fire(sim.record, sorted(requested), workers=8), strict=True))
    events = list(db.jobs.find({"type": "payout_event"}, {"params": 1, "status": 1, "error": 1, "idempotencyKey": 1}))
    applied = Counter(e["params"]["payout_id"] for e in events if e["status"] == "settled")
    refused = Counter((e.get("error") or {}).get("code") for e in events if e["status"] == "failed")
    assert set(refused) <= {"PAYOUT_STATE_CONFLICT"}, refused  # a second word on an ended payout moves nothing
    paid_per_key: Counter = Counter()
    for job_id, sent in requested.items():
        view, record = tally.told[job_id], records[job_id]
        if view["status"] != "settled":  # refused hold: nothing held, nothing sent to the provider
            assert job_id not in docs and record is None, (view, record)
            continue
        assert view["result"]["payoutId"] == job_id, view
        doc = docs[job_id]
        expected = "failed" if doc["amount"] % 100 == 13 else "paid"
        assert record is not None, f"payout {job_id} ({doc['status']}) never reached the simulator"
        assert (record["amount"], record["status"], doc["status"]) == (doc["amount"], expected, expected), (
            doc, record)
        assert applied[job_id] == 1, f"payout {job_id}: {applied[job_id]} transitions applied"
        assert [e["status"] for e in doc.get("events", [])] == [expected], doc
        if record["status"] == "paid":
            paid_per_key[sent.key] += 1
    assert all(n == 1 for n in paid_per_key.values()), [k for k, n in paid_per_key.items() if n > 1]
    # Every hold ended: nothing in flight, nothing held for any creator.
    in_flight = sum(w["balance"] for w in db.wallets.find({"$or": [{"_id": PAYOUTS_IN_FLIGHT},
                                                                  {"system": PAYOUTS_IN_FLIGHT}]}))
    assert in_flight == 0, f"{in_flight} coins still in flight"
    for creator in run.world.creators:
        r = run.http.request("GET", "/api/wallet/balance", token=creator.token)
        assert r.status == 200 and r.json["held"] == 0, r
    statuses = Counter(d["status"] for d in docs.values())
    return {
        "payouts_requested": len(requested),
        "payouts_paid": statuses.get("paid", 0),
        "payouts_failed": statuses.get("failed", 0),
        "payouts_refused_at_hold": len(requested) - len(docs),
        "payouts_submitted_more_than_once": sum(1 for d in docs.values() if d.get("submitAttempts", 0) > 1),
        "payouts_resolved_by_status_lookup": sum(1 for e in events if e["status"] == "settled"
                                                 and str(e.get("idempotencyKey", "")).startswith("status:")),
        "payout_events_refused_as_conflict": refused.get("PAYOUT_STATE_CONFLICT", 0),
    }


def check_refunds(run: MoneyOut) -> dict[str, Any]:
    """Per original: the settled refunds add up to what its view reports, never past its amount."""
    tally = run.tally
    refunds = [(tally.jobs[j], v) for j, v in tally.told.items() if tally.jobs[j].kind == "refund"]
    per_original: dict[str, list[dict[str, Any]]] = {}
    for _sent, view in refunds:
        if view["status"] == "settled":
            per_original.setdefault(view["result"]["originalJobId"], []).append(view["result"])
    codes = Counter((v["error"] or {}).get("code") for _s, v in refunds if v["status"] == "failed")
    assert set(codes) <= {"REFUND_EXCEEDS_ORIGINAL", "INSUFFICIENT_FUNDS"}, codes
    by_id = {o.job_id: o for o in run.originals}
    assert set(per_original) <= set(by_id), "a refund settled against an original the load never named"

    def check(original: Original) -> None:
        results = per_original.get(original.job_id, [])
        total = sum(r["amount"] for r in results)
        assert total <= original.amount, (original, results)
        if results:  # each refund saw what was left after the ones before it
            assert min(r["remaining"] for r in results) == original.amount - total, (original, results)
        view = run.http.job(run.admin, original.job_id)
        assert view.status == 200, view
        assert view.json.get("refunded", 0) == total, (original, view.json, results)
        assert len(view.json.get("refunds", [])) == len(results), (original, view.json, results)

    fire(check, run.originals, workers=8)
    settled = sum(len(r) for r in per_original.values())
    return {
        "refunds_sent": len(refunds),
        "refunds_settled": settled,
        "refund_failures": dict(codes),
        "originals_refunded": len(per_original),
        "originals_fully_refunded": sum(1 for j, r in per_original.items()
                                        if sum(x["amount"] for x in r) == by_id[j].amount),
        "most_refunds_of_one_original": max((len(r) for r in per_original.values()), default=0),
    }


def _assert_money_out_exercised(row: dict[str, Any]) -> None:
    """The mix really paid, failed and refunded (else the checks above would be empty)."""
    m = row["money_out"]
    assert m["payouts_paid"] >= 1 and m["payouts_failed"] >= 1, m
    assert m["refunds_settled"] >= 2 and m["most_refunds_of_one_original"] >= 2, m


# ------------------------------------------------------------------------------ scenarios


def test_sigkill_workers_during_payouts_and_refunds(chaos, chaos_scale, report):
    """SIGKILL pool processes of the ledger worker mid-batch, then the whole worker; a new one
    takes over, the sweeper re-rings what the dead one held, the payout tick submits holds
    whose submission message died with it."""
    chaos_scale = money_out_scale(chaos_scale)
    run = start_money_out(chaos, chaos_scale)
    stack, db = run.stack, run.db
    worker = stack.workers[0]
    kills, mid_task = kill_pool_children_mid_task(stack, worker, db, run.load, chaos_scale.kills,
                                                  random.Random(5))
    worker.kill()  # main process and pool: unacked doorbells and payout submissions stranded
    run.load.run_for(2.0)
    stack.start_worker({**PAYOUT_ENV, "PAYOUT_PROVIDER_URL": run.sim.process.url})
    recovered_at = time.monotonic()
    run.load.run_for(chaos_scale.after)
    row = finish_money_out(run, scenario="money_out_sigkill", recovered_at=recovered_at,
                           strikes={"pool_child_sigkills": kills, "sigkills_during_a_task": mid_task,
                                    "whole_worker_sigkills": 1})
    report(row)
    assert mid_task >= 1, "no SIGKILL landed while a task was running: the scenario proved nothing"
    _assert_money_out_exercised(row)


def test_redis_stops_and_starts_empty_during_payouts_and_refunds(chaos, chaos_scale, report):
    """Doorbells, payout submissions in the queue, ring flags and the tick's lock are gone;
    the API keeps accepting (the job insert is the record), the sweeper re-rings and the
    payout tick submits the holds nobody submitted."""
    chaos_scale = money_out_scale(chaos_scale)
    run = start_money_out(chaos, chaos_scale)
    stack = run.stack
    accepted_before = len(run.tally.jobs)
    stack.redis.stop()
    run.load.run_for(chaos_scale.outage)
    accepted_while_down = len(run.tally.jobs) - accepted_before
    stack.redis.wipe()
    stack.redis.start()
    recovered_at = time.monotonic()
    run.load.run_for(chaos_scale.after)
    row = finish_money_out(run, scenario="money_out_redis_restart", recovered_at=recovered_at,
                           strikes={"redis_restarts_empty": 1, "accepted_during_outage": accepted_while_down})
    saw = {name: "Connection to broker lost" in stack.log_text(proc)
           for name, proc in (("worker", stack.workers[0]), ("housekeeping", stack.housekeepers[0]))}
    row["strikes"].update({f"{name}_saw_connection_loss": seen for name, seen in saw.items()})
    report(row)
    assert saw["worker"] and saw["housekeeping"], f"a worker never noticed Redis going away: {saw}"
    assert accepted_while_down >= 1, "no request was accepted while Redis was down"
    _assert_money_out_exercised(row)


def test_secantusdb_restarts_on_the_same_data_during_payouts_and_refunds(chaos, chaos_scale, report):
    """Open transactions are lost, not half-applied; the API answers 503 and clients retry,
    the simulator retries its events until Purser answers, the settler retries its batch."""
    chaos_scale = money_out_scale(chaos_scale)
    run = start_money_out(chaos, chaos_scale)
    stack = run.stack
    errors_before = run.load.client_errors()
    stop_started = time.monotonic()
    stack.mongo.stop()
    run.load.run_for(chaos_scale.outage)
    stack.mongo.start(timeout=90)
    recovered_at = time.monotonic()
    run.load.run_for(chaos_scale.after)
    retried = run.load.client_errors() - errors_before
    row = finish_money_out(run, scenario="money_out_secantusdb_restart", recovered_at=recovered_at,
                           strikes={"secantusdb_restarts": 1, "outage_s": round(recovered_at - stop_started, 1),
                                    "client_retries_during_outage": retried})
    worker_log = stack.log_text(stack.workers[0]) + stack.log_text(stack.housekeepers[0])
    row["strikes"]["worker_store_errors_logged"] = len(re.findall(
        r"store unavailable|AutoReconnect|ServerSelectionTimeout|connection refused", worker_log, re.IGNORECASE))
    report(row)
    assert retried >= 1, "no client saw the outage: SecantusDB was never really down under load"
    _assert_money_out_exercised(row)

