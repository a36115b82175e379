"""Issue 4: jobs settle exactly once, in order per wallet, on real worker processes."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest

from ledger import audit
from ledger.operations import Credit, Gift, TopUp, Transfer, partition_of
from ledger.timeutil import utcnow
from services.queries import audit_entry_of
from tests.support.invariants import assert_money_invariants
from tests.support.journal import count_records, ledger_record, ledger_records
from tests.support.seeding import add_user, add_users, new_id, partitions
from tests.support.settle import (
    apply_credits_here,
    balance,
    balances,
    doorbell,
    entries_of,
    fund,
    fund_here,
    live_ring,
    noop_ring,
    queue_jobs,
    submit,
    wait_jobs,
)

SPLIT_333 = {"creator": 266, "platform:revenue": 50, "platform:processing": 17}


def test_submitted_job_is_settled_by_a_worker_with_exact_effects(db):
    ring = live_ring()
    fan, creator = add_user(db), add_user(db)
    topup = submit(db, TopUp(fan, 1000, "ptx-1"), ring=ring, request_id="req-topup")
    assert topup["status"] == "queued"
    assert wait_jobs(db, [topup["_id"]])[topup["_id"]]["status"] == "settled"

    gift = submit(db, Gift(fan, creator, 333, "thanks"), ring=ring, request_id="req-gift-1")
    job = wait_jobs(db, [gift["_id"]])[gift["_id"]]

    assert job["status"] == "settled"
    assert job["error"] is None and job["attempts"] == 1
    assert job["settledAt"] >= job["createdAt"]
    assert job["result"] == {"amount": 333, "creatorId": creator, "split": SPLIT_333}

    assert balances(db, [fan, creator, "platform:revenue", "platform:processing", "external:funding"]) == {
        fan: 667, creator: 266, "platform:revenue": 50, "platform:processing": 17, "external:funding": -1000}
    fan_wallet = db.wallets.find_one({"_id": fan})
    assert fan_wallet["version"] == 2 and fan_wallet["lastTransactionAt"] == job["settledAt"]

    txs = list(ledger_records(db, {"jobId": gift["_id"]}))
    assert len(txs) == 1
    tx = txs[0]
    assert tx["txId"] == gift["_id"] and tx["type"] == "gift" and tx["requestId"] == "req-gift-1"
    assert tx["partition"] == gift["partition"]
    assert entries_of(tx) == sorted([(fan, -333), (creator, 266), ("platform:revenue", 50),
                                     ("platform:processing", 17)])
    topup_tx = ledger_record(db, {"jobId": topup["_id"]})
    assert entries_of(topup_tx) == sorted([("external:funding", -1000), (fan, 1000)])
    assert topup_tx["providerTxId"] == "ptx-1"

    assert db.auditlogs.count_documents({"jobs.jobId": gift["_id"]}) == 1
    entry, record = audit_entry_of(db, gift["_id"])
    assert entry["partition"] == gift["partition"] and record["outcome"] == "settled"
    assert record["actor"] == {"type": "user", "id": fan}
    assert record["requestId"] == "req-gift-1" and tx["auditSeq"] == entry["seq"]
    # Before/after for the balances this partition owns; the creator's share is a
    # deferred credit unless the creator hashes to the same partition.
    expected = {fan: (1000, 667), "platform:revenue": (0, 50), "platform:processing": (0, 17)}
    if partition_of(creator, partitions()) == gift["partition"]:
        expected[creator] = (0, 266)
    else:
        assert entry["creditsOut"][0]["amounts"] == [{"walletId": creator, "amount": 266}]
    assert {b["walletId"]: (b["before"], b["after"]) for b in record["balances"]} == expected
    # Chained to the previous entry of the same partition (the top-up shares the fan's partition).
    previous = db.auditlogs.find_one({"partition": entry["partition"], "seq": entry["seq"] - 1})
    assert [r["jobId"] for r in previous["jobs"]] == [topup["_id"]] and entry["prevHash"] == previous["hash"]
    assert entry["hash"] == audit.entry_hash(entry, previous["hash"])
    part = db.partitions.find_one({"_id": gift["partition"]})
    assert part["auditSeq"] == entry["seq"] and part["auditHead"] == entry["hash"]
    assert_money_invariants(db, accepted_job_ids={topup["_id"], gift["_id"]})


def test_the_same_doorbell_delivered_five_times_applies_the_job_once(db):
    sender, receiver = add_user(db), add_user(db)
    fund(db, [sender], 500)
    p = db.jobs.find_one({"type": "credit"})["partition"]
    _wait_for_idle_partition(db, p)
    seq_before = db.partitions.find_one({"_id": p})["seq"]
    job = submit(db, Transfer(sender, receiver, 120), ring=noop_ring)
    assert job["partition"] == p
    for _ in range(5):
        doorbell(p)
    done = wait_jobs(db, [job["_id"]])[job["_id"]]
    # Let the four redundant deliveries run too before counting effects.
    _wait_for_idle_partition(db, p)

    assert done["status"] == "settled" and done["attempts"] == 1
    assert balances(db, [sender, receiver]) == {sender: 380, receiver: 120}
    assert count_records(db, {"jobId": job["_id"]}) == 1
    assert db.auditlogs.count_documents({"jobs.jobId": job["_id"]}) == 1
    # One batch applied it; the other deliveries found nothing and wrote nothing.
    assert db.partitions.find_one({"_id": p})["seq"] == seq_before + 1
    assert_money_invariants(db)


def _wait_for_idle_partition(db, partition, settle_for: float = 1.0) -> None:
    """Wait until the partition's sequence stops moving (a short quiet period)."""
    import time

    last = db.partitions.find_one({"_id": partition})
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle_for:
        time.sleep(0.2)
        now = db.partitions.find_one({"_id": partition})
        if now != last:
            last, quiet_since = now, time.monotonic()


def test_twenty_transfers_from_one_wallet_settle_in_acceptance_order(db):
    ring = live_ring()
    sender, receiver = add_user(db), add_user(db)
    fund(db, [sender], 150)  # covers exactly 15 of the 20 transfers
    jobs = [submit(db, Transfer(sender, receiver, 10, f"#{i}"), ring=ring) for i in range(20)]
    done = wait_jobs(db, [j["_id"] for j in jobs])
    ordered = [done[j["_id"]] for j in jobs]

    assert [j["status"] for j in ordered] == ["settled"] * 15 + ["failed"] * 5
    assert {j["error"]["code"] for j in ordered[15:]} == {"INSUFFICIENT_FUNDS"}
    settled_at = [j["settledAt"] for j in ordered]
    assert settled_at == sorted(settled_at)
    # Audit order = acceptance order: by block, then by position in the block.
    found = {j["_id"]: audit_entry_of(db, j["_id"]) for j in jobs}
    order = [(found[j["_id"]][0]["seq"], found[j["_id"]][0]["jobs"].index(found[j["_id"]][1])) for j in jobs]
    assert order == sorted(order) and len(set(order)) == 20
    befores = [next(b["before"] for b in found[j["_id"]][1]["balances"] if b["walletId"] == sender)
               for j in jobs[:15]]
    assert befores == list(range(150, 0, -10))
    assert balances(db, [sender, receiver]) == {sender: 0, receiver: 150}
    assert_money_invariants(db)


def _expected_sequential(jobs, opening):
    """Outcome of settling ``jobs`` one after another in acceptance order."""
    bal = dict(opening)
    outcome = {}
    for job in sorted(jobs, key=lambda j: (j["createdAt"], j["_id"])):
        s, r, amount = job["params"]["sender"], job["params"]["receiver"], job["params"]["amount"]
        if bal.get(s, 0) >= amount:
            bal[s] -= amount
            bal[r] = bal.get(r, 0) + amount
            outcome[job["_id"]] = "settled"
        else:
            outcome[job["_id"]] = "failed"
    return outcome, bal


def test_two_worker_processes_on_one_partition_never_double_apply_or_overdraw(db, celery_worker_proc):
    env = {"SETTLE_BATCH_MAX": "7"}
    starters = [threading.Thread(target=celery_worker_proc,
                                 kwargs={"queues": ["ledger.0"], "concurrency": 2, "extra_env": env})
                for _ in range(2)]
    for t in starters:
        t.start()
    senders = add_users(db, 8, partition=0)
    outsiders = add_users(db, 4, partition=1)
    fund(db, senders, 100)
    for t in starters:
        t.join()

    # 25 transfers of 7 from each sender (175 wanted, 100 held): to outsiders and to
    # other senders, so a credit earlier in the queue can fund a later debit.
    ops = []
    for i in range(25):
        for n, s in enumerate(senders):
            target = outsiders[(i + n) % 4] if i % 3 else senders[(n + 1) % len(senders)]
            ops.append(Transfer(s, target, 7))
    jobs = queue_jobs(db, ops)
    assert {j["partition"] for j in jobs} == {0}
    for _ in range(30):
        doorbell(0)
    done = wait_jobs(db, [j["_id"] for j in jobs], timeout=150)

    expected, expected_balances = _expected_sequential(jobs, {s: 100 for s in senders})
    assert {i: j["status"] for i, j in done.items()} == expected
    assert balances(db, senders + outsiders) == {w: expected_balances.get(w, 0) for w in senders + outsiders}
    assert count_records(db, {"jobId": {"$in": list(done)}}) == sum(
        1 for s in expected.values() if s == "settled")
    assert all(j["attempts"] == 1 for j in done.values())
    assert_money_invariants(db)


def test_concurrent_settlers_of_one_partition_conflict_and_the_loser_finds_nothing(db):
    """Deterministic form of the partition guard: settler A decides, B commits, A writes."""
    from services.settlement import settle_partition

    sender, receiver = add_user(db, partition=2), add_user(db, partition=3)
    fund_here(db, [sender], 100)
    jobs = queue_jobs(db, [Transfer(sender, receiver, 30) for _ in range(3)])
    a_decided, b_done = threading.Event(), threading.Event()
    calls = []

    def clock_a():
        calls.append(1)
        if len(calls) == 1:
            a_decided.set()  # A has read the jobs and the partition inside its transaction
            assert b_done.wait(60)
        return utcnow()

    results = {}

    def run_a():
        results["a"] = settle_partition(db, 2, partitions=partitions(), batch_max=50, clock=clock_a)

    thread = threading.Thread(target=run_a)
    thread.start()
    assert a_decided.wait(60)
    results["b"] = settle_partition(db, 2, partitions=partitions(), batch_max=50)
    b_done.set()
    thread.join(60)

    assert results["b"].settled == 3
    assert results["a"].settled == 0 and results["a"].failed == 0
    # A decided on the same jobs but its writes conflicted with B's commit: on retry
    # it found the partition empty and applied nothing.
    assert len(calls) == 1
    apply_credits_here(db)  # the receiver's partition applies its credit (its doorbell's work)
    assert balances(db, [sender, receiver]) == {sender: 10, receiver: 90}
    assert {j["status"] for j in wait_jobs(db, [j["_id"] for j in jobs]).values()} == {"settled"}
    assert_money_invariants(db)


def test_sweeper_settles_a_job_whose_doorbell_was_never_published(db):
    from tasks.maintenance import sweep

    def broken_ring(partition, request_id=None):
        raise ConnectionError("broker down")

    sender, receiver = add_user(db), add_user(db)
    fund_here(db, [sender], 50)
    lost = submit(db, Transfer(sender, receiver, 20), ring=noop_ring)
    # A publish failure is logged, never raised: the job is stored all the same.
    failed_publish = submit(db, Transfer(sender, receiver, 5), ring=broken_ring)
    # Older than the sweep age (3 s by default) without waiting for it.
    db.jobs.update_many({"_id": {"$in": [lost["_id"], failed_publish["_id"]]}},
                        {"$set": {"createdAt": utcnow() - timedelta(seconds=30)}})
    assert db.jobs.count_documents({"status": "queued"}) == 2
    sweep.apply_async(queue="purser.default")
    done = wait_jobs(db, [lost["_id"], failed_publish["_id"]])
    assert {j["status"] for j in done.values()} == {"settled"}
    assert balances(db, [sender, receiver]) == {sender: 25, receiver: 25}
    assert_money_invariants(db)


def test_sweeper_reports_jobs_stranded_beyond_ledger_partitions(db, caplog):
    """LEDGER_PARTITIONS lowered with jobs queued: nobody would ever settle them."""
    from infra.config import get_settings
    from tasks.maintenance import stranded_partition, sweep

    partitions = get_settings().ledger_partitions
    sender, receiver = add_user(db), add_user(db)
    job = submit(db, Transfer(sender, receiver, 5), ring=noop_ring)
    assert stranded_partition(db, partitions) is None
    db.jobs.update_one({"_id": job["_id"]}, {"$set": {"partition": partitions + 2}})
    assert stranded_partition(db, partitions) == partitions + 2

    with caplog.at_level("ERROR", logger="purser.maintenance"):
        sweep.run()
    stranded = [r for r in caplog.records if "beyond LEDGER_PARTITIONS" in r.getMessage()]
    assert len(stranded) == 1 and stranded[0].partition == partitions + 2
    db.jobs.delete_one({"_id": job["_id"]})  # unreachable by design: keep the invariants' "nothing queued"


POISON = [
    pytest.param("transfer", {"bogus": 1}, id="unknown-field"),
    pytest.param("teleport", {"sender": "x"}, id="unknown-type"),
    pytest.param("renew", {"subscriber": "x", "subscription_id": "y", "period_end": "not a date"}, id="bad-date"),
    pytest.param("transfer", None, id="params-null"),
    pytest.param("transfer", {"sender": "S", "receiver": "R", "amount": "12"}, id="string-amount"),
    pytest.param("transfer", {"sender": "S", "receiver": "R", "amount": 2.5}, id="float-amount"),
    pytest.param("transfer", {"sender": "S", "receiver": "R", "amount": -40}, id="negative-amount"),
    pytest.param("transfer", {"sender": "S", "receiver": "R", "amount": True}, id="bool-amount"),
    pytest.param(None, {"sender": "S", "receiver": "R", "amount": 1}, id="no-type"),
]


@pytest.mark.parametrize(("kind", "params"), POISON)
def test_a_poison_job_fails_internal_error_without_blocking_its_partition(db, kind, params):
    sender, receiver = add_user(db, partition=1), add_user(db, partition=1)
    fund(db, [sender, receiver], 100)
    first = queue_jobs(db, [Transfer(sender, receiver, 10)])[0]
    poison = {**first, "_id": new_id(), "createdAt": first["createdAt"] + timedelta(milliseconds=1),
              "type": kind, "params": params}
    for name, value in (("sender", sender), ("receiver", receiver)):
        if isinstance(params, dict) and name in params:
            poison["params"] = {**poison["params"], name: value}
    if kind is None:
        del poison["type"]
    db.jobs.insert_one(poison)
    later = queue_jobs(db, [Transfer(sender, receiver, 15)], now=poison["createdAt"] + timedelta(milliseconds=1))
    ids = [first["_id"], poison["_id"], later[0]["_id"]]
    doorbell(1)
    done = wait_jobs(db, ids)

    assert done[first["_id"]]["status"] == "settled"
    assert done[later[0]["_id"]]["status"] == "settled"
    assert done[poison["_id"]]["status"] == "failed"
    assert done[poison["_id"]]["error"]["code"] == "INTERNAL_ERROR"
    assert audit_entry_of(db, poison["_id"])[1]["outcome"] == "failed"
    assert db.auditlogs.count_documents({"jobs.jobId": poison["_id"]}) == 1
    assert count_records(db, {"jobId": poison["_id"]}) == 0
    assert balances(db, [sender, receiver]) == {sender: 75, receiver: 125}
    assert_money_invariants(db)


def _commit_listener():
    from pymongo import monitoring

    class CommitEvents(monitoring.CommandListener):
        def __init__(self):
            self.commit_failures, self.commits = 0, 0

        def started(self, event):
            pass

        def succeeded(self, event):
            if event.command_name == "commitTransaction":
                self.commits += 1

        def failed(self, event):
            if event.command_name == "commitTransaction":
                self.commit_failures += 1

    return CommitEvents()


FAIL_COMMIT = [
    pytest.param({"closeConnection": True}, id="connection-closed-before-commit"),
    pytest.param({"writeConcernError": {"code": 64, "codeName": "WriteConcernFailed", "errmsg": "injected"}},
                 id="committed-but-reply-says-error"),
]


@pytest.mark.parametrize("fault", FAIL_COMMIT)
def test_an_unknown_commit_result_still_settles_the_job_exactly_once(db, fault):
    """The commit's outcome is unknown to the settler; its retry must not apply twice."""
    from pymongo import MongoClient

    from infra.config import get_settings
    from services.settlement import settle_partition

    sender, receiver = add_user(db, partition=3), add_user(db, partition=0)
    fund_here(db, [sender], 100)
    jobs = queue_jobs(db, [Transfer(sender, receiver, 40), Transfer(sender, receiver, 40),
                           Transfer(sender, receiver, 40)])
    app_name = f"purser-failpoint-{uuid.uuid4().hex[:8]}"
    listener = _commit_listener()
    settings = get_settings()
    client = MongoClient(settings.mongodb_uri, tz_aware=True, appname=app_name, event_listeners=[listener])
    try:
        client.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                             data={"failCommands": ["commitTransaction"], "appName": app_name, **fault})
        drained = settle_partition(client[settings.mongodb_db], 3, partitions=settings.ledger_partitions, batch_max=50)
    finally:
        client.admin.command("configureFailPoint", "failCommand", mode="off")
        client.close()

    assert listener.commit_failures == 1, "the failpoint should have hit the batch's commit"
    assert drained.settled == 2 and drained.failed == 1
    done = wait_jobs(db, [j["_id"] for j in jobs])
    assert [done[j["_id"]]["status"] for j in jobs] == ["settled", "settled", "failed"]
    assert balances(db, [sender, receiver]) == {sender: 20, receiver: 80}
    assert count_records(db, {"jobId": {"$in": [j["_id"] for j in jobs]}}) == 2
    assert_money_invariants(db)


def test_an_unknown_commit_result_in_a_worker_settles_once(db):
    sender, receiver = add_user(db), add_user(db)
    fund_here(db, [sender], 60)  # the worker stays idle: the next commit is the job's
    db.client.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                            data={"failCommands": ["commitTransaction"], "closeConnection": True})
    try:
        job = submit(db, Transfer(sender, receiver, 60), ring=live_ring())
        done = wait_jobs(db, [job["_id"]])[job["_id"]]
    finally:
        db.client.admin.command("configureFailPoint", "failCommand", mode="off")
    assert done["status"] == "settled"
    assert balances(db, [sender, receiver]) == {sender: 0, receiver: 60}
    assert count_records(db, {"jobId": job["_id"]}) == 1
    assert_money_invariants(db)


def test_credits_from_other_partitions_land_while_the_wallet_spends(db):
    """Credits land as ``$inc`` on wallets of other partitions; nothing is lost or doubled."""
    ring = live_ring()
    spender = add_user(db, partition=0)
    fund(db, [spender], 1000)
    others = [add_user(db, partition=p) for p in (1, 2, 3)]
    jobs = []
    for i in range(30):
        jobs.append(submit(db, Transfer(spender, others[i % 3], 10), ring=ring))
        jobs.append(submit(db, Transfer(others[i % 3], spender, 5), ring=ring))
        jobs.append(submit(db, Credit(others[(i + 1) % 3], 1, "bonus"), ring=ring))
    done = wait_jobs(db, [j["_id"] for j in jobs])
    # Whatever the interleaving across partitions, money is conserved exactly.
    statuses = [done[j["_id"]]["status"] for j in jobs]
    assert statuses.count("settled") + statuses.count("failed") == 90
    total = sum(balances(db, [spender, *others]).values())
    assert total == 1000 + 30
    assert balance(db, spender) >= 700
    assert_money_invariants(db)


def test_a_second_topup_with_a_settled_provider_tx_id_fails_without_blocking(db):
    """After its idempotency key expired (24 h), a resent webhook is a second job for the
    same provider transaction: the unique ledger index refuses it, and that refusal must
    fail the job, not wedge its partition in an endless retry."""
    user, other = add_user(db, partition=2), add_user(db, partition=3)
    first = submit(db, TopUp(user, 500, "ptx-resent"), ring=live_ring())
    assert wait_jobs(db, [first["_id"]])[first["_id"]]["status"] == "settled"
    resent, same_batch, after = queue_jobs(db, [TopUp(user, 500, "ptx-resent"), TopUp(user, 70, "ptx-twice"),
                                                Transfer(user, other, 100)])
    twice = queue_jobs(db, [TopUp(user, 70, "ptx-twice")], now=after["createdAt"] + timedelta(milliseconds=1))[0]
    doorbell(2)
    done = wait_jobs(db, [resent["_id"], same_batch["_id"], after["_id"], twice["_id"]], timeout=60)
    assert done[resent["_id"]]["status"] == "failed"
    assert done[same_batch["_id"]]["status"] == "settled"
    assert done[after["_id"]]["status"] == "settled"
    assert done[twice["_id"]]["status"] == "failed"
    assert balances(db, [user, other]) == {user: 470, other: 100}
    assert count_records(db, {"providerTxId": "ptx-resent"}) == 1
    assert_money_invariants(db)
