"""Issue 4, operations side: migrations, indexes behind every hot query, the audit CLIs."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from ledger.operations import Gift, Transfer
from ledger.timeutil import utcnow
from services.queries import audit_entry_of
from tests.support.invariants import assert_money_invariants
from tests.support.seeding import add_user
from tests.support.settle import fund, live_ring, submit, wait_jobs

ROOT = Path(__file__).resolve().parents[2]
INITIAL = importlib.import_module("migrations.versions.0001_initial")
DUE_INDEX = importlib.import_module("migrations.versions.0002_subscription_due_index")
SINGLE_WRITER = importlib.import_module("migrations.versions.0004_single_writer")
MONEY_OUT = importlib.import_module("migrations.versions.0005_money_out")
CONSOLE = importlib.import_module("migrations.versions.0007_console")
MONEY_OVER_TIME = importlib.import_module("migrations.versions.0008_money_over_time")
JOB_IS_THE_KEY = importlib.import_module("migrations.versions.0009_job_is_the_key")
JOB_IS_THE_JOURNAL = importlib.import_module("migrations.versions.0010_job_is_the_journal")


def _run(stack_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env={**os.environ, **stack_env},
                          capture_output=True, text=True, timeout=120)


def _index_names(db) -> dict[str, set[str]]:
    return {name: set(db[name].index_information()) - {"_id_"}
            for name in [*INITIAL.INDEXES, "credits", "payouts", "check_runs", *MONEY_OVER_TIME.INDEXES, "form_keys"]
            if name in db.list_collection_names()}


def _expected_index_names() -> dict[str, set[str]]:
    names = {name: {ix.document["name"] for ix in indexes} for name, indexes in INITIAL.INDEXES.items()}
    for name, indexes in DUE_INDEX.INDEXES.items():
        names[name] |= {ix.document["name"] for ix in indexes}
    names["jobs"] -= {"status_age"}  # dropped by 0003 (the sweeper probes partition_queue)
    names["credits"] = set()
    for name, indexes in SINGLE_WRITER.NEW_INDEXES.items():  # 0004: single writer, fewer index entries
        names[name] |= {ix.document["name"] for ix in indexes}
    for name, indexes in SINGLE_WRITER.OLD_INDEXES.items():
        names[name] -= {ix.document["name"] for ix in indexes}
    names["payouts"] = set()
    for name, indexes in MONEY_OUT.INDEXES.items():  # 0005: payouts, refunds
        names[name] |= {ix.document["name"] for ix in indexes}
    names["check_runs"] = set()
    for name, indexes in CONSOLE.INDEXES.items():  # 0007: check runs, the operator trail of a target
        names[name] |= {ix.document["name"] for ix in indexes}
    for name, indexes in MONEY_OVER_TIME.INDEXES.items():  # 0008: checkpoints, statements, schedules
        names[name] = {ix.document["name"] for ix in indexes}
    names["payouts"] |= {MONEY_OVER_TIME.PAYOUT_INDEX.document["name"]}
    names["users"] |= {MONEY_OVER_TIME.ROLE_INDEX.document["name"]}
    # 0009: the job holds its idempotency key; console form keys move to form_keys.
    names["jobs"] |= {ix.document["name"] for ix in JOB_IS_THE_KEY.JOB_INDEXES}
    names["form_keys"] = names.pop("idempotency_keys")
    # 0010: a settled job is its journal entry; the ledger's indexes move onto jobs.
    names["jobs"] |= {ix.document["name"] for ix in JOB_IS_THE_JOURNAL.JOB_INDEXES}
    del names["transactions"]
    return names


def test_migrations_up_twice_is_a_no_op_down_then_up_restores_and_status_reports(fresh_db, stack_env):
    import migrations

    db = fresh_db
    assert _index_names(db) == _expected_index_names()
    assert migrations.up(db) == []  # fresh_db already applied everything
    assert [row[2] for row in migrations.status(db)] == [True] * len(migrations.discover())

    out = _run(stack_env, "migrations", "up")
    assert out.returncode == 0, out.stderr
    assert "nothing to do" in out.stdout
    status = _run(stack_env, "migrations", "status")
    assert status.returncode == 0, status.stderr
    assert "0001 initial" in status.stdout and "applied" in status.stdout and "pending" not in status.stdout

    versions = [m.number for m in migrations.discover()]
    partial = _run(stack_env, "migrations", "down", "--to", "1")
    assert partial.returncode == 0 and f"reverted: {versions[:0:-1]}" in partial.stdout, partial.stdout + partial.stderr
    assert "userId_unique" in db.wallets.index_information() and "credits" not in db.list_collection_names()
    assert "status_age" in db.jobs.index_information()
    assert "due_by_renewal" not in db.subscriptions.index_information()
    assert "0002 subscription_due_index" in _run(stack_env, "migrations", "status").stdout
    down = _run(stack_env, "migrations", "down")
    assert down.returncode == 0, down.stderr
    assert "reverted: [1]" in down.stdout
    assert not set(db.list_collection_names()) & set(INITIAL.INDEXES)
    status = _run(stack_env, "migrations", "status")
    assert "0001 initial" in status.stdout and "pending" in status.stdout

    up = _run(stack_env, "migrations", "up")
    assert up.returncode == 0, up.stderr
    assert f"applied: {versions}" in up.stdout
    assert _index_names(db) == _expected_index_names()
    # System wallets live as per-partition buckets, created by each partition's first batch.
    assert db.wallets.count_documents({"system": {"$exists": True}}) == 0
    again = _run(stack_env, "migrations", "up")
    assert "nothing to do" in again.stdout
    assert db.migrations.count_documents({}) == len(migrations.discover())
    assert_money_invariants(db)


def _stages(plan: Any) -> list[dict[str, Any]]:
    """Every stage node of an explain plan (``inputStage``/``inputStages`` trees)."""
    found: list[dict[str, Any]] = []
    if isinstance(plan, dict):
        if "stage" in plan:
            found.append(plan)
        for key in ("inputStage", "queryPlan", "winningPlan"):
            if key in plan:
                found += _stages(plan[key])
        for child in plan.get("inputStages", []):
            found += _stages(child)
    return found


def _plan(explained: dict[str, Any]) -> list[dict[str, Any]]:
    return _stages(explained["queryPlanner"]["winningPlan"])


def _assert_ixscan(explained: dict[str, Any], indexes: set[str], label: str) -> None:
    stages = _plan(explained)
    kinds = [s["stage"] for s in stages]
    assert "COLLSCAN" not in kinds, f"{label}: {kinds}"
    used = {s.get("indexName") for s in stages if s["stage"] == "IXSCAN"}
    assert used & indexes, f"{label}: expected an IXSCAN on {indexes}, plan {kinds} on {used}"


def test_every_hot_query_is_served_by_an_index(db):
    """The shapes the code sends, as it sends them. Not listed: the history pages after
    the first (``services.queries._page_filter`` adds a top-level ``$or``, which
    SecantusDB answers with a COLLSCAN; MongoDB uses the index)."""
    ring = live_ring()
    fan, creator = add_user(db), add_user(db, role="creator")
    fund(db, [fan], 1000)
    gift = submit(db, Gift(fan, creator, 100), ring=ring)
    wait_jobs(db, [gift["_id"]])
    now = utcnow()
    soon = now + timedelta(milliseconds=1)  # the tick's "expiresAt <= now" (services.subscriptions._until)
    db.contents.insert_one({"_id": "c" * 24, "creatorId": creator, "title": "t", "price": 5, "isActive": True,
                            "createdAt": now})
    db.subscriptions.insert_one({"_id": "s" * 24, "subscriberId": fan, "creatorId": creator, "price": 5,
                                 "periodDays": 30, "status": "active", "autoRenew": True, "startedAt": now,
                                 "expiresAt": now + timedelta(days=30), "renewals": 0, "createdAt": now})

    finds = [
        ("settle queue", "jobs", {"partition": 0, "status": "queued"}, [("createdAt", 1), ("_id", 1)],
         {"partition_queue"}),
        ("job history", "jobs", {"ownerId": fan}, [("createdAt", -1), ("_id", -1)], {"owner_recent"}),
        ("sweep", "jobs", {"partition": 0, "status": "queued", "createdAt": {"$lt": now}}, None,
         {"partition_queue"}),
        ("wallet history", "jobs", {"parties": fan}, [("settledAt", -1), ("_id", -1)], {"parties_settled"}),
        ("refunds of an original", "jobs", {"refundOf": {"$in": [gift["_id"]]}}, None, {"refund_of"}),
        ("inbound credits", "credits", {"to": 0, "applied": False}, [("createdAt", 1), ("_id", 1)], {"inbound"}),
        ("stale credits", "credits", {"to": 0, "applied": False, "createdAt": {"$lt": now}}, None, {"inbound"}),
        ("tx by provider id", "jobs", {"providerTxId": {"$in": ["ptx"]}}, None, {"providerTxId_unique"}),
        ("idempotency key", "jobs", {"idem.owner": fan, "idem.key": "k"}, None, {"idem_owner_key"}),
        ("expired keys", "jobs", {"idem.expiresAt": {"$lte": now}}, [("idem.expiresAt", 1)], {"idem_expires"}),
        ("console form key", "form_keys", {"ownerId": fan, "key": "console:k"}, None, {"owner_key_unique"}),
        ("unlock lookup", "unlocks", {"userId": fan, "contentId": "c" * 24}, None, {"user_content_unique"}),
        ("unlock snapshot", "unlocks", {"userId": {"$in": [fan]}}, None, {"user_content_unique"}),
        ("subscriptions due", "subscriptions", {"status": "active", "expiresAt": {"$lte": now}}, None,
         {"status_expires"}),
        ("renewals due", "subscriptions", {"status": "active", "autoRenew": True, "expiresAt": {"$lt": soon}},
         [("expiresAt", 1), ("_id", 1)], {"due_by_renewal"}),
        ("renewals due, rest of an instant", "subscriptions",
         {"status": "active", "autoRenew": True, "expiresAt": now, "_id": {"$gt": "a"}},
         [("expiresAt", 1), ("_id", 1)], {"due_by_renewal"}),
        ("renewals due, later instants", "subscriptions",
         {"status": "active", "autoRenew": True, "expiresAt": {"$gt": now - timedelta(days=1), "$lt": soon}},
         [("expiresAt", 1), ("_id", 1)], {"due_by_renewal"}),
        ("lapsed without renewal", "subscriptions", {"status": "active", "autoRenew": False,
                                                     "expiresAt": {"$lt": soon}}, None, {"due_by_renewal"}),
        ("subscriber access", "subscriptions", {"subscriberId": fan, "creatorId": creator, "status": "active",
                                                "expiresAt": {"$gt": now}}, None, {"subscriber_creator"}),
        ("subscribe snapshot", "subscriptions", {"subscriberId": {"$in": [fan]}}, None, {"subscriber_creator"}),
        ("renew snapshot", "subscriptions", {"_id": {"$in": ["s" * 24]}}, None, {"_id_"}),
        ("my subscriptions", "subscriptions", {"subscriberId": fan}, [("createdAt", -1)], {"subscriber_creator"}),
        ("login", "users", {"email": f"{fan}@example.com", "accountStatus": "active"}, None,
         {"email_unique", "email_status"}),
        ("user by email", "users", {"email": f"{fan}@example.com"}, None, {"email_unique", "email_status"}),
        ("wallet", "wallets", {"_id": fan}, None, {"_id_"}),
        ("creator contents", "contents", {"creatorId": creator, "isActive": True}, None, {"creator_active"}),
        ("audit chain", "auditlogs", {"partition": gift["partition"]}, [("seq", 1)], {"partition_seq_unique"}),
        ("audit head", "auditlogs", {"partition": gift["partition"], "seq": 2}, None, {"partition_seq_unique"}),
        # A job's (or its transaction's) pointer names its audit block: one unique-index probe.
        ("audit of a job", "auditlogs", {"partition": gift["partition"], "seq": 1}, None, {"partition_seq_unique"}),
    ]
    failures = []
    for label, collection, query, sort, indexes in finds:
        cursor = db[collection].find(query)
        if sort:
            cursor = cursor.sort(sort).limit(200)
        try:
            _assert_ixscan(cursor.explain(), indexes, label)
        except AssertionError as exc:
            failures.append(str(exc))
    # The sweep's stranded-partition probe names its index (a range on the first field
    # plus an equality is otherwise a COLLSCAN in SecantusDB).
    stranded = db.jobs.find({"partition": {"$gte": 4}, "status": "queued"}, {"partition": 1}).hint("partition_queue")
    _assert_ixscan(stranded.explain(), {"partition_queue"}, "stranded partitions")
    assert not failures, "\n".join(failures)

    assert_money_invariants(db)


def test_reconcile_and_verify_audit_cli_exit_0_when_clean_and_1_after_tampering(db, stack_env):
    ring = live_ring()
    fan, creator, friend = add_user(db), add_user(db), add_user(db)
    fund(db, [fan], 900)
    jobs = [submit(db, Gift(fan, creator, 250), ring=ring), submit(db, Transfer(fan, friend, 100), ring=ring)]
    wait_jobs(db, [j["_id"] for j in jobs])

    for command in ("reconcile", "verify-audit"):
        clean = _run(stack_env, "ops", command)
        assert clean.returncode == 0, clean.stdout + clean.stderr
        assert '"ok": true' in clean.stdout

    # A wallet balance changed behind the ledger's back.
    db.wallets.update_one({"_id": friend}, {"$inc": {"balance": 7}})
    drift = _run(stack_env, "ops", "reconcile")
    assert drift.returncode == 1, drift.stdout
    assert friend in drift.stdout and '"ok": false' in drift.stdout
    db.wallets.update_one({"_id": friend}, {"$inc": {"balance": -7}})
    assert _run(stack_env, "ops", "reconcile").returncode == 0

    # An audit entry's amount rewritten: its hash no longer matches.
    entry, record = audit_entry_of(db, jobs[0]["_id"])
    tampered = [dict(r, entries=[dict(e, amount=e["amount"] - 1 if e["amount"] > 0 else e["amount"])
                                 for e in r.get("entries", [])]) for r in entry["jobs"]]
    db.auditlogs.update_one({"_id": entry["_id"]}, {"$set": {"jobs": tampered}})
    broken = _run(stack_env, "ops", "verify-audit")
    assert broken.returncode == 1, broken.stdout
    assert "hash does not match" in broken.stdout
    # The ledger itself was not touched: reconcile still passes.
    assert _run(stack_env, "ops", "reconcile").returncode == 0
    db.auditlogs.update_one({"_id": entry["_id"]}, {"$set": {"jobs": entry["jobs"]}})

    # A deleted audit entry breaks the chain as well.
    last, _ = audit_entry_of(db, jobs[1]["_id"])
    db.auditlogs.delete_one({"_id": last["_id"]})
    assert _run(stack_env, "ops", "verify-audit").returncode == 1
    db.auditlogs.insert_one(last)
    assert _run(stack_env, "ops", "verify-audit").returncode == 0

    # Removing a partition's head document must not hide edits to that chain.
    head = db.partitions.find_one({"_id": entry["partition"]})
    db.partitions.delete_one({"_id": head["_id"]})
    db.auditlogs.update_one({"_id": entry["_id"]}, {"$set": {"jobs": tampered}})
    headless = _run(stack_env, "ops", "verify-audit")
    assert headless.returncode == 1, headless.stdout
    assert "without a partition head" in headless.stdout
    db.auditlogs.update_one({"_id": entry["_id"]}, {"$set": {"jobs": entry["jobs"]}})
    db.partitions.insert_one(head)
    assert _run(stack_env, "ops", "verify-audit").returncode == 0
    assert_money_invariants(db)


def test_celery_is_configured_for_money_and_connects_to_mongodb_only_after_fork(fresh_db, stack_env):
    from workers.celery_app import app

    conf = app.conf
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.task_routes["ledger.settle"]["queue"] == "ledger.0"
    # Importing the worker modules opens no MongoDB client (PyMongo is not fork-safe).
    probe = ("import workers, tasks.settle, tasks.maintenance, tasks.subscriptions, infra.mongo as m;"
             "assert m._client is None, 'MongoDB client created at import'")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env={**os.environ, **stack_env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert_money_invariants(fresh_db)


def test_the_beat_reconcile_task_reports_drift_in_the_worker_log(db, session_worker):
    import time

    from tasks.maintenance import reconcile

    fan = add_user(db)
    fund(db, [fan], 300)
    marker = "reconciliation found drift"
    seen = session_worker.log_tail(lines=100000).count(marker)
    db.wallets.update_one({"_id": fan}, {"$inc": {"balance": 1}})
    try:
        reconcile.apply_async(queue="purser.default")
        deadline = time.monotonic() + 60
        while session_worker.log_tail(lines=100000).count(marker) == seen:
            assert time.monotonic() < deadline, "the worker did not report the drift"
            time.sleep(0.2)
        line = [ln for ln in session_worker.log_tail(lines=100000).splitlines() if marker in ln][-1]
        assert '"level": "ERROR"' in line and fan in line
    finally:
        db.wallets.update_one({"_id": fan}, {"$inc": {"balance": -1}})
    assert_money_invariants(db)
