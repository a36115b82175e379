"""Fault injection under load: strike, recover, and prove no coin was lost or doubled.

Each scenario keeps a mixed load of money requests running over HTTP (transfers,
gifts, unlocks, subscriptions, provider top-ups; clients retry with the same key
after a 5xx, a transport error or a 409), strikes, recovers, then waits for every
accepted job to reach a terminal state and reports:

* accepted: jobs the clients were told about (202, replays included once);
* settled / failed: their terminal states;
* lost: accepted jobs not terminal or missing (must be 0);
* doubled: a key with two jobs, a job with two ledger transactions or audit
  entries, a provider payment credited twice (must be 0);
* drain_after_recovery_s: from the moment the fault was repaired until nothing
  was queued.

Every scenario then checks that each balance equals what the clients were told
and runs the money invariants. Figures: ``var/chaos/last-run-<scale>.json``.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

import pytest

from ledger.timeutil import utcnow
from tests.chaos.chaoskit import (
    Load,
    build_world,
    kill_pool_children_mid_task,
    outcome,
    probe_for,
    queued,
    sweeper_env,
)
from tests.support.load import Sent, Tally, fire

# The full-scale scenarios (make chaos) run longer than pytest.ini's 300 s default.
pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(1500)]


def _arm(db: Any, mode: Any, data: dict[str, Any]) -> None:
    db.client.admin.command({"configureFailPoint": "failCommand", "mode": mode, "data": data})


def _disarm(db: Any) -> None:
    db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})


def _start_loaded(chaos: Any, scale: Any, worker_env: dict[str, str] | None = None) -> tuple:
    """The stack with a sweeping beat, a funded world and the mixed load warmed up."""
    stack, db = chaos
    stack.start(beat=sweeper_env(), worker=worker_env)
    http, tally = stack.http, Tally()
    world = build_world(db, http, tally, scale)
    load = Load(http, tally, world, scale.clients, think=scale.think).start()
    load.run_for(scale.warmup)
    return stack, db, http, tally, world, load


# ----------------------------------------------------------------------------- workers


def test_sigkill_pool_children_mid_batch_then_the_whole_worker(chaos, chaos_scale, report):
    """SIGKILL pool processes while batches run, then the whole worker; a new worker
    takes over and the sweeper re-rings what the dead one held."""
    started = time.monotonic()
    stack, db, http, tally, world, load = _start_loaded(chaos, chaos_scale)

    worker = stack.workers[0]
    kills, mid_task = kill_pool_children_mid_task(stack, worker, db, load, chaos_scale.kills, random.Random(3))

    worker.kill()  # the whole worker: main process and pool, unacked messages stranded in Redis
    load.run_for(2.0)  # jobs pile up with no worker at all
    stack.start_worker()
    recovered_at = time.monotonic()
    load.run_for(chaos_scale.after)
    load.stop()
    row = outcome(db, http, tally, world, load, scenario="worker_sigkill", scale=chaos_scale,
                  recovered_at=recovered_at, started_at=started,
                  strikes={"pool_child_sigkills": kills, "sigkills_during_a_task": mid_task,
                           "whole_worker_sigkills": 1})
    report(row)
    assert mid_task >= 1, "no SIGKILL landed while a task was running: the scenario proved nothing"


# ------------------------------------------------------------------------------- Redis


@pytest.mark.smoke
def test_redis_stops_and_starts_empty(chaos, chaos_scale, report):
    """Every queued message, ring flag and kombu binding is gone; workers and beat must
    reconnect, and the sweeper re-rings the partitions whose doorbells were lost."""
    started = time.monotonic()
    stack, db, http, tally, world, load = _start_loaded(chaos, chaos_scale)

    redis = stack.redis
    before = load.count()
    redis.stop()
    load.run_for(chaos_scale.outage)  # the API keeps accepting: the job insert is the durable record
    accepted_while_down = load.count() - before
    redis.wipe()
    redis.start()
    recovered_at = time.monotonic()
    load.run_for(chaos_scale.after)
    load.stop()
    row = outcome(db, http, tally, world, load, scenario="redis_restart_empty", scale=chaos_scale,
                  recovered_at=recovered_at, started_at=started,
                  strikes={"redis_restarts_empty": 1, "requests_during_outage": accepted_while_down})
    import redis as redis_lib
    bindings = sorted(k.decode() for k in redis_lib.Redis.from_url(redis.url).keys("_kombu.binding.*"))
    row["strikes"]["kombu_bindings_after"] = len(bindings)
    worker_log = stack.log_text(stack.workers[0])
    row["strikes"]["worker_saw_connection_loss"] = "Connection to broker lost" in worker_log
    report(row)
    # Jobs accepted after the restart settled, so the worker consumed again: it reconnected.
    assert row["strikes"]["worker_saw_connection_loss"], "the worker never noticed Redis going away"


# ----------------------------------------------------------------------------- MongoDB


def test_secantusdb_stops_and_starts_on_the_same_data(chaos, chaos_scale, report):
    started = time.monotonic()
    stack, db, http, tally, world, load = _start_loaded(chaos, chaos_scale)

    mongo = stack.mongo
    stop_started = time.monotonic()
    mongo.stop()  # SIGTERM: WiredTiger closes cleanly; open transactions are lost, not half-applied
    load.run_for(chaos_scale.outage)
    mongo.start(timeout=90)
    recovered_at = time.monotonic()
    outage = round(recovered_at - stop_started, 1)
    load.run_for(chaos_scale.after)
    load.stop()
    row = outcome(db, http, tally, world, load, scenario="secantusdb_restart", scale=chaos_scale,
                  recovered_at=recovered_at, started_at=started,
                  strikes={"secantusdb_restarts": 1, "outage_s": outage})
    report(row)


# ------------------------------------------------------------------------- fail points

# The commit applied, then the reply carries a non-retryable error: Purser's code sees
# a failed commit that in fact happened (the settle task retries and finds nothing).
APPLIED_THEN_ERROR = {"failCommands": ["commitTransaction"],
                      "writeConcernError": {"code": 100, "errmsg": "chaos: reply lost after commit"}}

COMMIT_FAULTS: list[tuple[str, dict[str, Any]]] = [
    # Commit applied, reply says "unknown commit result": the driver retries the commit.
    ("commit_applied_unknown_result", {"failCommands": ["commitTransaction"],
                                       "writeConcernError": {"code": 91, "errmsg": "chaos"},
                                       "errorLabels": ["UnknownTransactionCommitResult"]}),
    # Connection dropped; SecantusDB drops it *before* running the commit.
    ("commit_connection_closed", {"failCommands": ["commitTransaction"], "closeConnection": True}),
    # A transient error: the driver runs the whole transaction again.
    ("commit_transient", {"failCommands": ["commitTransaction"], "errorCode": 251,
                          "errorLabels": ["TransientTransactionError"]}),
]

# A real network timeout: the worker's socket (socketTimeoutMS=6000 in its URI) gives up
# while the server holds the commit 7.5 s, then applies it. (The socket timeout must stay
# above the slowest normal operation: the sweeper's distinct takes seconds under load.)
BLOCKED_COMMIT = {"failCommands": ["commitTransaction"], "blockConnection": True, "blockTimeMS": 7500}

INSERT_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("insert_connection_closed", {"failCommands": ["insert"], "closeConnection": True}),
    ("insert_write_conflict", {"failCommands": ["insert"], "errorCode": 112,
                               "errorLabels": ["TransientTransactionError"]}),
]
# "Node is shutting down" also makes pymongo drop the server for up to serverSelectionTimeoutMS (5 s).
INSERT_NOT_PRIMARY = ("insert_not_primary", {"failCommands": ["insert"], "errorCode": 91})


def _cycle(db: Any, load: Load, scale: Any, faults: list[tuple[str, dict[str, Any]]], armed: dict) -> None:
    deadline = time.monotonic() + scale.strike_window
    while True:
        for label, data in faults:
            _arm(db, {"times": 2}, data)
            armed[label] = armed.get(label, 0) + 1
            load.run_for(scale.dwell)
        if time.monotonic() >= deadline:
            break


def test_failcommand_on_commit_transaction(chaos, chaos_scale, report):
    """The unknown-commit-result family. SecantusDB's failCommand cannot close the
    connection *after* a commit (closeConnection and errorCode short-circuit before the
    command runs); writeConcernError runs the command and then fails the reply, and a
    blockConnection longer than the worker's socket timeout is a real network error
    around a commit that still happens. See docs/reliability.md."""
    started = time.monotonic()
    uri = chaos[0].mongo.uri + "&socketTimeoutMS=6000"
    stack, db, http, tally, world, load = _start_loaded(chaos, chaos_scale, {"MONGODB_URI": uri})
    worker = stack.workers[0]

    def settle_errors() -> int:
        return stack.log_text(worker).count("store unavailable while settling")

    armed: dict[str, int] = {}
    hits_applied_then_error = 0
    for _ in range(1 if chaos_scale.name == "ci" else 3):
        before = settle_errors()
        _arm(db, {"times": 1}, APPLIED_THEN_ERROR)
        armed["commit_applied_then_error"] = armed.get("commit_applied_then_error", 0) + 1
        # Wait for a settlement commit to take it: the settle task then logs its retry.
        hits_applied_then_error += probe_for(lambda before=before: settle_errors() > before, timeout=30, poll=0.2)
    _cycle(db, load, chaos_scale, COMMIT_FAULTS, armed)
    for _ in range(chaos_scale.blocks):
        _arm(db, {"times": 1}, BLOCKED_COMMIT)
        armed["commit_blocked_past_socket_timeout"] = armed.get("commit_blocked_past_socket_timeout", 0) + 1
        load.run_for(BLOCKED_COMMIT["blockTimeMS"] / 1000 + 1.0)
    _disarm(db)
    recovered_at = time.monotonic()
    load.run_for(chaos_scale.after)
    load.stop()
    strikes = {"armed": armed, "applied_then_error_seen_by_settle_task": hits_applied_then_error,
               "settle_retries_logged": settle_errors()}
    row = outcome(db, http, tally, world, load, scenario="failpoint_commit", scale=chaos_scale,
                  recovered_at=recovered_at, started_at=started, strikes=strikes)
    report(row)
    assert hits_applied_then_error >= 1, "no commit-applied-then-error reached the settle task"


def test_failcommand_on_insert(chaos, chaos_scale, report):
    """Inserts fail transiently: the API's key claim and job insert, and the inserts inside
    settlement transactions."""
    started = time.monotonic()
    stack, db, http, tally, world, load = _start_loaded(chaos, chaos_scale)
    faults = INSERT_FAULTS + ([INSERT_NOT_PRIMARY] if chaos_scale.name == "full" else [])
    armed: dict[str, int] = {}
    _cycle(db, load, chaos_scale, faults, armed)
    # A fail point may be used up entirely by settlement inserts (retried inside the
    # transaction, invisible to clients); make sure the API's inserts were hit too.
    for _ in range(20):
        if load.client_errors():
            break
        _arm(db, {"times": 1}, INSERT_FAULTS[0][1])
        armed[INSERT_FAULTS[0][0]] += 1
        probe_for(lambda: load.client_errors() > 0, timeout=3, poll=0.05)
    _disarm(db)
    recovered_at = time.monotonic()
    load.run_for(chaos_scale.after)
    load.stop()
    row = outcome(db, http, tally, world, load, scenario="failpoint_insert", scale=chaos_scale,
                  recovered_at=recovered_at, started_at=started, strikes={"armed": armed})
    report(row)
    assert row["client_retries"] >= 1, "no insert failure reached a client: the fail point never fired"


# ------------------------------------------------------------------- doorbells, beats


def test_every_doorbell_duplicated(chaos, chaos_scale, report):
    """Each doorbell is published twice (PURSER_DUPLICATE_DOORBELLS=1, web, worker and beat)
    and two workers consume, so two settlers of one partition race all the time."""
    stack, db = chaos
    started = time.monotonic()
    dup = {"PURSER_DUPLICATE_DOORBELLS": "1"}
    stack.start(web=dup, worker=dup, beat=sweeper_env(dup), workers=2)
    http, tally = stack.http, Tally()
    world = build_world(db, http, tally, chaos_scale)
    load = Load(http, tally, world, chaos_scale.clients, think=chaos_scale.think).start()
    load.run_for(chaos_scale.warmup + chaos_scale.strike_window)
    recovered_at = time.monotonic()
    load.stop()
    row = outcome(db, http, tally, world, load, scenario="duplicate_doorbells", scale=chaos_scale,
                  recovered_at=recovered_at, started_at=started,
                  strikes={"workers": 2, "copies_per_doorbell": 2})
    report(row)


def test_two_beats_at_once(chaos, chaos_scale, report):
    """Two beat processes tick subscriptions and the sweeper every second: every due
    subscription is renewed (or expired) exactly once."""
    stack, db = chaos
    started = time.monotonic()
    beat_env = sweeper_env({"SUBSCRIPTION_TICK_SECONDS": "1"})
    stack.start(beat=beat_env, beats=2)
    http, tally = stack.http, Tally()
    world = build_world(db, http, tally, chaos_scale)

    # Every fan subscribes to the first creator; then the period is made to end.
    creator = world.creators[0]

    def subscribe(fan: Any) -> Sent:
        key = f"sub-{fan.id}"
        return tally.add(Sent("subscribe", fan.id, key, http.money("/api/subscription/subscribe", fan,
                                                                  {"creatorId": creator.id}, key)))

    assert all(s.accepted for s in fire(subscribe, world.fans))
    assert probe_for(lambda: queued(db) == 0, timeout=120)
    subs = list(db.subscriptions.find({"creatorId": creator.id, "status": "active"}))
    assert len(subs) == len(world.fans)
    renewing = {s["_id"] for s in subs[: len(subs) // 2]}
    past = utcnow() - timedelta(minutes=5)
    db.subscriptions.update_many({"_id": {"$in": sorted(renewing)}}, {"$set": {"expiresAt": past}})
    db.subscriptions.update_many({"_id": {"$in": [s["_id"] for s in subs if s["_id"] not in renewing]}},
                                 {"$set": {"expiresAt": past, "autoRenew": False}})

    load = Load(http, tally, world, chaos_scale.clients, think=chaos_scale.think)
    load.WEIGHTS = tuple(w for w in Load.WEIGHTS if w[0] != "subscribe")
    load.start()
    load.run_for(chaos_scale.warmup + chaos_scale.strike_window)
    recovered_at = time.monotonic()
    load.stop()
    # Renewals are submitted by whichever tick gets to run; wait for all of them.
    all_submitted = probe_for(lambda: db.jobs.count_documents({"type": "renew"}) >= len(renewing), timeout=180,
                             poll=0.5)
    submitted_after_load_s = round(time.monotonic() - recovered_at, 1)
    assert all_submitted, "not every due subscription got a renewal job"
    row = outcome(db, http, tally, world, load, scenario="two_beats", scale=chaos_scale,
                  recovered_at=recovered_at, started_at=started, strikes={"beats": 2})

    renewals = list(db.jobs.find({"type": "renew"}))
    per_sub = {}
    for job in renewals:
        per_sub.setdefault(job["params"]["subscription_id"], []).append(job)
    assert set(per_sub) == renewing, "every auto-renewing subscription gets exactly one renewal job"
    assert all(len(jobs) == 1 for jobs in per_sub.values())
    for sub in db.subscriptions.find({"_id": {"$in": [s["_id"] for s in subs]}}):
        if sub["_id"] in renewing:
            assert sub["renewals"] == 1 and sub["status"] == "active", sub
        else:
            assert sub["status"] == "expired" and sub.get("renewals", 0) == 0, sub
    worker_logs = "".join(stack.log_text(w) for w in stack.workers + stack.housekeepers)
    beat_logs = "".join(stack.log_text(b) for b in stack.beats)
    row["strikes"].update({
        "renewals": len(renewals),
        "ticks_sent_by_beats": beat_logs.count("Sending due task subscriptions-tick"),
        "ticks_run": worker_logs.count("subscription tick done"),
        "ticks_skipped_by_lock": worker_logs.count("subscription tick skipped"),
        "ticks_discarded_expired": worker_logs.count("Discarding revoked task: subscriptions.tick"),
        "sweeps_discarded_expired": worker_logs.count("Discarding revoked task: ledger.sweep"),
        "renewals_submitted_s_after_load_stopped": submitted_after_load_s,
    })
    report(row)
