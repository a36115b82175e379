"""Chaos over money-over-time (issue 25): statements and scheduled payouts under SIGKILL.

Two scenarios on real processes (the Procfile's lines, private stores):

* ``statements_sigkill``: last calendar month's activity for every creator (a gift
  each, settled in this process with the clock inside that month, as
  tests/support/history.py does, but batched per partition as loadtest/history_bench.py
  does: a thousand creators in seconds), then web, the housekeeping worker and TWO beats
  closing statements every second. While statements are being stored the housekeeping
  worker's pool child is SIGKILLed, then the whole worker and one beat; a new worker
  resumes. Every creator must end with exactly one statement and one entry in the
  statements' audit chain (partition -2), the chain verifies, every statement ties out
  and matches the ledger, and ``statement.ready`` exists once per statement.
* ``payout_schedule_sigkill``: creators with balances and a weekly schedule; the
  schedule tick (``services.payout_schedules.tick``) is called in this process with
  ``now`` at the slot, as the end-to-end test does (on the wall clock no weekly slot is
  due, so the beats' own tick is kept idle), twice at once (two beats), while the ledger
  worker settles the holds and the provider simulator's answers; its pool children are
  SIGKILLed mid-batch, then the whole worker; the same slot is ticked again (a restarted
  beat, and one that died between placing and moving the slot on) before a new worker
  starts. Each creator must have exactly one payout for the slot, under the slot's
  deterministic job id, its balance reduced once (restored once when the provider
  failed it), every job terminal once, and the money invariants hold.
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest

from devstack.ports import free_port
from devstack.provider_sim import ProviderSimProcess
from ledger.operations import Gift, TopUp
from ledger.periods import Month, month_of
from ledger.statements import lines_digest
from ledger.timeutil import utcnow
from tests.chaos.chaoskit import (
    RETRYABLE,
    Scale,
    drain,
    kill_pool_children_mid_task,
    payouts_done,
    probe_for,
    sweeper_env,
    worker_lost_count,
)
from tests.support.client import ApiClient
from tests.support.history import broker_ring
from tests.support.invariants import assert_money_invariants
from tests.support.journal import ledger_records
from tests.support.load import Sent, Tally, doubled, fire, fund
from tests.support.seeding import User, add_users, partitions, seed_users

# Runs in `make test-all` (CI) and `make chaos`, not in `make test` (no smoke marker).
pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(900)]

STATEMENT_CHAIN = -2
# Beats close statements and tick webhooks every second; the statements' lock lives as long
# as one tick, so a lock left by a SIGKILLed run is gone a second later. The beats' payout
# schedule tick is idle: the payout scenario ticks its slot itself, with ``now`` at the slot.
BEAT_ENV = {"STATEMENT_TICK_SECONDS": "1", "WEBHOOK_TICK_SECONDS": "1", "PAYOUT_SCHEDULE_TICK_SECONDS": "86400"}
PAYOUT_ENV = {"PAYOUT_TICK_SECONDS": "1", "PAYOUT_RESOLVE_AFTER_SECONDS": "2", "PROVIDER_SIM_DELAY_SECONDS": "1",
              "PAYOUT_SCHEDULE_TICK_SECONDS": "86400"}


@dataclasses.dataclass(frozen=True)
class OverTimeScale:
    creators: int  # creators with a statement to close
    payees: int  # creators with a weekly schedule
    kills: int  # mid-task pool-child SIGKILLs in the payout scenario


def over_time_scale(scale: Scale) -> OverTimeScale:
    """Sized so statement generation runs for several seconds (the strikes land inside it)
    and each scenario fits ~90 s at ci, ~3 min at full, on 2 shared cores."""
    if scale.name == "full":
        return OverTimeScale(creators=2000, payees=120, kills=3)
    return OverTimeScale(creators=1000, payees=60, kills=1)


def _skip_at_month_start() -> None:
    now = utcnow()
    if now < month_of(now).start + timedelta(minutes=5):
        pytest.skip("last month is not closed yet for the first minutes of a month (HISTORY_MARGIN_SECONDS)")


# ------------------------------------------------------------------------------ statements


def _settle(db: Any, ops: list[Any], at: Any) -> None:
    """Queue ``ops`` as one batch and settle them with the clock at ``at`` (the settler's own
    code), then the credits they left, as tests/support/history.py's ``settle_at`` does."""
    from services.jobs import Intake, accept_jobs
    from services.settlement import settle_partition

    parts = partitions()
    stored = accept_jobs(db, [Intake(op, op.wallet) for op in ops], partitions=parts, ring=None).stored
    settle_partition(db, stored[0]["partition"], partitions=parts, batch_max=200, clock=lambda: at)
    while targets := db.credits.distinct("to", {"applied": False}):
        for target in targets:
            settle_partition(db, target, partitions=parts, batch_max=200, clock=lambda: at)


def seed_last_month(db: Any, creators: int) -> tuple[Month, list[str]]:
    """``creators`` creators, each gifted once last month by a fan of its own partition (one
    batch per partition and 200 gifts: no cross-partition credit for a user)."""
    from services import checkpoints

    month = month_of(utcnow()).previous()
    parts = partitions()
    ids: list[str] = []
    for p in range(parts):
        share = creators // parts + (1 if p < creators % parts else 0)
        if not share:
            continue
        [fan] = add_users(db, 1, p)
        made = add_users(db, share, p, role="creator")
        for uid in (fan, *made):  # wallets that existed during the month (else no statement)
            db.users.update_one({"_id": uid}, {"$set": {"createdAt": month.start}})
            db.wallets.update_one({"_id": uid}, {"$set": {"createdAt": month.start}})
        _settle(db, [TopUp(fan, 1_000 * share, f"ptx-month-{p}")], month.start + timedelta(hours=1))
        for start in range(0, share, 200):
            day = month.start + timedelta(days=1 + start // 200 % 25, hours=12)
            _settle(db, [Gift(fan, uid, 100 + (start + i) % 97) for i, uid in enumerate(made[start:start + 200])],
                    day)
        ids.extend(made)
    assert db.jobs.count_documents({"status": {"$ne": "settled"}}) == 0
    # Fold the month into checkpoints now, as beat's roll-up would have long before the month
    # closed: statement openings and closings are then a checkpoint read, not a replay.
    checkpoints.roll_up(db, partitions=parts, now=utcnow(), margin=timedelta(minutes=2), max_windows=100_000)
    return month, ids


def _ledger_by_wallet(db: Any, month: Month) -> tuple[Counter, Counter]:
    """Each wallet's net movement and number of transactions in ``month``, from the ledger."""
    net: Counter = Counter()
    moves: Counter = Counter()
    for tx in ledger_records(db, {"createdAt": {"$gte": month.start, "$lt": month.end}},
                                   {"entries": 1, "parties": 1}):
        for entry in tx["entries"]:
            net[entry["walletId"]] += entry["amount"]
        for party in set(tx.get("parties", ())):
            moves[party] += 1
    return net, moves


def test_statement_generation_killed_mid_run(chaos, chaos_scale, report):
    """SIGKILL the housekeeping pool child while it stores statements, then the whole
    housekeeping worker and one of the two beats; a new worker finishes the month."""
    from services.reconcile import verify_audit

    _skip_at_month_start()
    started = time.monotonic()
    size = over_time_scale(chaos_scale)
    stack, db = chaos
    month, creators = seed_last_month(db, size.creators)
    seeded_s = round(time.monotonic() - started, 1)
    n = len(creators)

    fire(lambda job: job(), [lambda: stack.start_web(BEAT_ENV), lambda: stack.start_housekeeping(BEAT_ENV)],
         workers=2)
    [admin] = seed_users(db, 1, "admin", "ops")
    r = stack.http.request("POST", "/api/admin/webhooks", token=admin,
                           json_body={"url": "http://127.0.0.1:9/statements", "eventTypes": ["statement.ready"]})
    assert r.status == 201, r  # before the beats: an endpoint is served entries after its creation
    fire(lambda _: stack.start_beat(BEAT_ENV), range(2), workers=2)
    generation_started = time.monotonic()

    def stored() -> int:
        return db.statements.count_documents({"period": month.label})

    housekeeper = stack.housekeepers[0]
    assert probe_for(lambda: stored() >= max(5, n // 8), timeout=60, poll=0.02), "no statement stored by beat"
    at_child_kill = stored()
    children = [p for p in housekeeper.pool_processes() if p.is_running()]
    assert children, "the housekeeping worker has no pool process"
    for child in children:
        child.kill()  # SIGKILL: close_statements dies mid-run, between or inside a statement's writes
    assert probe_for(lambda: stored() >= at_child_kill + max(5, n // 8), timeout=90, poll=0.02), \
        "the respawned pool child did not resume"
    at_worker_kill = stored()
    housekeeper.kill()  # main process and pool
    stack.beats[0].kill()  # and one of the two beats: the other keeps ticking
    time.sleep(1.0)
    stalled = stored()
    stack.start_housekeeping(BEAT_ENV)
    recovered_at = time.monotonic()
    assert probe_for(lambda: stored() >= n, timeout=150, poll=0.2), \
        f"{stored()} of {n} statements after recovery"
    generation_s = round(time.monotonic() - generation_started, 1)
    mid_task = worker_lost_count(stack.log_text(housekeeper))

    # Exactly one statement per creator for the month, and nobody else's.
    heads = {h["_id"]: h for h in db.statements.find({"period": month.label})}
    per_user = Counter(h["userId"] for h in heads.values())
    assert set(per_user) == set(creators) and set(per_user.values()) == {1}, \
        [u for u, c in per_user.items() if c != 1][:5]
    # One statements-chain entry per statement; the chain verifies end to end.
    chain = Counter(e["target"]["id"] for e in db.auditlogs.find({"partition": STATEMENT_CHAIN}, {"target": 1}))
    assert set(chain) == set(heads) and set(chain.values()) == {1}, \
        [s for s, c in chain.items() if c != 1][:5] or sorted(set(heads) ^ set(chain))[:5]
    audit = verify_audit(db)
    assert audit.ok, audit.as_dict()
    assert audit.partitions[STATEMENT_CHAIN].checked == n, audit.as_dict()
    # Each statement ties out and agrees with the ledger; its stored lines are what its digest vouches for.
    net, moves = _ledger_by_wallet(db, month)
    lines: dict[str, list[dict[str, Any]]] = {}
    for chunk in db.statement_lines.find({"statementId": {"$in": sorted(heads)}}).sort([("statementId", 1),
                                                                                         ("n", 1)]):
        lines.setdefault(chunk["statementId"], []).extend(chunk["lines"])
    for sid, head in heads.items():
        user = head["userId"]
        assert head["tieOut"]["ok"] and not head["provisional"], head
        assert (head["openingBalance"], head["closingBalance"], head["movements"]) == (0, net[user], moves[user]), \
            (head, net[user], moves[user])
        assert lines_digest(lines.get(sid, [])) == head["linesDigest"] and len(lines[sid]) == moves[user], sid
    # statement.ready once per statement: its event id derives from the statement.
    assert probe_for(lambda: db.webhook_events.count_documents({"type": "statement.ready"}) >= n, timeout=60), \
        f"{db.webhook_events.count_documents({'type': 'statement.ready'})} statement.ready events for {n}"
    events = Counter(e["statementId"] for e in db.webhook_events.find({"type": "statement.ready"},
                                                                      {"statementId": 1}))
    assert set(events) == set(heads) and set(events.values()) == {1}
    # One endpoint: one delivery per statement (no webhooks worker runs, so they stay pending).
    deliveries = Counter(d["statementId"] for d in db.webhook_deliveries.find({"type": "statement.ready"},
                                                                              {"statementId": 1}))
    assert set(deliveries) == set(heads) and set(deliveries.values()) == {1}

    report({
        "scenario": "statements_sigkill",
        "scale": chaos_scale.name,
        "requests": n,
        "accepted": n,
        "settled": len(heads),
        "failed": 0,
        "lost": n - len(heads),
        "doubled": sum(c - 1 for c in per_user.values()),
        "client_retries": 0,
        "drain_after_recovery_s": round(time.monotonic() - recovered_at, 1),
        "duration_s": round(time.monotonic() - started, 1),
        "over_time": {"creators": n, "month": month.label, "statements": len(heads),
                      "chain_entries": sum(chain.values()),
                      "statement_ready_events": sum(events.values()), "deliveries": sum(deliveries.values()),
                      "stored_at_pool_child_kill": at_child_kill, "stored_at_worker_kill": at_worker_kill,
                      "stored_while_down": stalled, "seed_s": seeded_s, "generation_s": generation_s},
        "strikes": {"pool_child_sigkills": len(children), "sigkills_during_a_task": mid_task,
                    "whole_worker_sigkills": 1, "beat_sigkills": 1},
    })
    assert 0 < at_child_kill < at_worker_kill < n, "a strike landed outside the run: it proved nothing"
    assert mid_task >= 1, "the pool-child SIGKILL did not land while close_statements was running"


# ------------------------------------------------------------------------------ payout schedule


class Trickle:
    """Provider top-ups of a few fans, retried with the same id until answered, so the ledger
    worker is inside a batch whenever a SIGKILL lands (the tick's holds alone settle in moments)."""

    def __init__(self, http: ApiClient, tally: Tally, fans: list[User]) -> None:
        self.http, self.tally, self.fans = http, tally, fans
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="trickle", daemon=True)
        self.sent = 0

    def _run(self) -> None:
        rng = random.Random(25)
        while not self.stop_event.is_set():
            fan, ptx = rng.choice(self.fans), f"ptx-{uuid.uuid4().hex}"
            for _ in range(60):
                reply = self.http.webhook(fan.id, 10 * rng.randint(1, 50), ptx)
                if reply.status not in RETRYABLE:
                    break
                time.sleep(0.5)
            self.tally.add(Sent("topup", fan.id, f"provider:{ptx}", reply))
            self.sent += 1
            self.stop_event.wait(0.02)

    def start(self) -> Trickle:
        self.thread.start()
        return self

    def run_for(self, seconds: float) -> None:
        time.sleep(seconds)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive(), "the trickle did not stop"



def test_payout_schedule_under_worker_sigkill(chaos, chaos_scale, report):
    """Tick one weekly slot twice at once, SIGKILL the ledger worker's pool children mid-batch
    and then the whole worker, tick the slot again, start a new worker: one payout per slot."""
    from infra.config import get_settings
    from services import payout_schedules

    started = time.monotonic()
    size = over_time_scale(chaos_scale)
    stack, db = chaos
    sim_port = free_port()
    env = {**PAYOUT_ENV, "PAYOUT_PROVIDER_URL": f"http://127.0.0.1:{sim_port}"}
    stack.start(web=env, worker=env, beat=sweeper_env(env))
    assert stack.web is not None
    sim = ProviderSimProcess(stack.env(env), stack.logs / "provider-sim.log", stack.web.base_url, port=sim_port)
    stack.processes.append(sim)  # stopped with the stack
    sim.start(timeout=30)

    http, tally = stack.http, Tally()
    payees = seed_users(db, size.payees, "creator", "payee")
    fans = seed_users(db, 6, "free", "trickle")
    # The whole balance is paid: every tenth amount ends in 13, which the simulator fails.
    funded = {u.id: 5_000 + 100 * i + (13 if i % 10 == 0 else 0) for i, u in enumerate(payees)}
    fire(lambda u: fund(http, tally, [u], funded[u.id], workers=1), payees, workers=8)
    fund(http, tally, fans, 1_000)
    drain(db)
    now = utcnow()
    for u in payees:
        payout_schedules.put_schedule(db, u.id, "weekly", "monday", 1_000, now)
    slots = {d["nextSlot"] for d in db.payout_schedules.find({}, {"nextSlot": 1})}
    assert len(slots) == 1, slots
    [slot] = slots
    at = slot + timedelta(minutes=1)  # the slot is due: a beat ticking a minute after it
    settings = get_settings()
    ring = broker_ring(stack.redis.url)

    def tick() -> payout_schedules.ScheduleTick:
        return payout_schedules.tick(db, floor=settings.payout_min_amount, partitions=partitions(), ring=ring, now=at)

    trickle = Trickle(http, tally, fans).start()
    first = fire(lambda _: tick(), range(2), workers=2)  # two beats ticking the same slot at once
    worker = stack.workers[0]
    kills, mid_task = kill_pool_children_mid_task(stack, worker, db, trickle, size.kills,  # type: ignore[arg-type]
                                                  random.Random(25))
    worker.kill()  # main process and pool: unacked doorbells stranded
    again = tick()  # a restarted beat ticking at the same instant: the slot has moved on
    # A beat that died after placing the payouts but before moving the slot on: the slot is due again.
    rewound = db.payout_schedules.update_many({}, {"$set": {"nextSlot": slot}}).modified_count
    replayed = tick()
    trickle.run_for(2.0)
    stack.start_worker(env)
    recovered_at = time.monotonic()
    trickle.run_for(2.0)
    trickle.stop()

    drain(db)
    assert probe_for(lambda: payouts_done(db), timeout=150, poll=0.5), \
        f"payouts not all terminal: {Counter(d['status'] for d in db.payouts.find({}, {'status': 1}))}"
    drained_s = round(time.monotonic() - recovered_at, 1)

    placed = sum(t.placed for t in first)
    # The two ticks race over the same schedules: between them each slot placed once, the loser
    # of a race seeing the winner's payout (or the slot already moved on).
    assert placed == len(payees) and all(t.placed + t.existing <= len(payees) for t in first), first
    assert (again.placed, again.existing) == (0, 0), again
    assert rewound == len(payees) and (replayed.placed, replayed.existing) == (0, len(payees)), replayed
    # One payout per creator and slot, under the slot's deterministic id, by job and by payout.
    expected_ids = {u.id: payout_schedules.slot_job_id(payout_schedules.slot_key(u.id, slot)) for u in payees}
    jobs: dict[str, list[dict[str, Any]]] = {}
    for j in db.jobs.find({"type": "payout"}, {"ownerId": 1, "status": 1}):
        jobs.setdefault(j["ownerId"], []).append(j)
    assert {u: [j["_id"] for j in js] for u, js in jobs.items()} == {u: [i] for u, i in expected_ids.items()}
    assert all(js[0]["status"] == "settled" for js in jobs.values()), jobs
    payouts = {p["_id"]: p for p in db.payouts.find({})}
    assert set(payouts) == set(expected_ids.values()), sorted(set(payouts) ^ set(expected_ids.values()))[:5]
    runs = Counter(r["userId"] for r in db.payout_schedule_runs.find({"slot": slot}, {"userId": 1}))
    assert runs == Counter(set(funded)), runs  # one run record per creator and slot
    # Each balance reduced exactly once: by the whole balance when paid, given back when the
    # provider failed it; one hold, one outcome.
    wallets = {w["_id"]: w["balance"] for w in db.wallets.find({"_id": {"$in": sorted(funded)}}, {"balance": 1})}
    outcomes: Counter = Counter()
    for uid, amount in funded.items():
        payout = payouts[expected_ids[uid]]
        status = "failed" if amount % 100 == 13 else "paid"
        assert (payout["amount"], payout["status"]) == (amount, status), payout
        assert [e["status"] for e in payout.get("events", [])] == [status], payout
        assert wallets[uid] == (amount if status == "failed" else 0), (uid, amount, wallets[uid])
        outcomes[status] += 1
    # Every accepted job ended settled or failed exactly once; nothing doubled; money adds up.
    accepted = tally.accepted_ids | set(expected_ids.values()) | {
        j["_id"] for j in db.jobs.find({"type": "payout_event"}, {"_id": 1})}
    statuses = {j["_id"]: j["status"] for j in db.jobs.find({}, {"status": 1})}
    assert set(statuses) == accepted, sorted(set(statuses) ^ accepted)[:5]
    assert set(statuses.values()) <= {"settled", "failed"}, Counter(statuses.values())
    # The only refusals: a provider's second word on a payout already ended (its event retried
    # after a kill, or the payout tick's status lookup racing the simulator) moves nothing.
    codes = Counter((j.get("error") or {}).get("code") for j in db.jobs.find({"status": "failed"}, {"error": 1}))
    assert set(codes) <= {"PAYOUT_STATE_CONFLICT"}, codes
    doubles = doubled(db)
    assert not doubles, doubles[:5]
    assert_money_invariants(db, accepted_job_ids=accepted)

    counts = Counter(statuses.values())
    report({
        "scenario": "payout_schedule_sigkill",
        "scale": chaos_scale.name,
        "requests": len(payees),
        "accepted": len(accepted),
        "settled": counts.get("settled", 0),
        "failed": counts.get("failed", 0),
        "lost": 0,
        "doubled": len(doubles),
        "client_retries": 0,
        "drain_after_recovery_s": drained_s,
        "failure_codes": dict(codes),
        "duration_s": round(time.monotonic() - started, 1),
        "over_time": {"payees": len(payees), "slot": slot.isoformat(), "payouts": len(payouts),
                      "paid": outcomes["paid"], "failed_by_provider": outcomes["failed"],
                      "first_ticks": [t.as_dict() for t in first], "restarted_tick": again.as_dict(),
                      "rewound_tick": replayed.as_dict(), "trickle_topups": trickle.sent},
        "strikes": {"pool_child_sigkills": kills, "sigkills_during_a_task": mid_task, "whole_worker_sigkills": 1},
    })
    assert mid_task >= 1, "no SIGKILL landed while a task was running: the scenario proved nothing"
