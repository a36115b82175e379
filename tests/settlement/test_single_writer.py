"""Issue 18: single-writer partitions, system-wallet buckets and deferred credits.

Settled in this process (no doorbell is published, so the session worker leaves
these partitions alone): the interleavings are chosen by the test, not by timing.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient, monitoring

from ledger.money import SYSTEM_WALLETS
from ledger.operations import Gift, Transfer, partition_of
from ledger.routing import parse_bucket
from services import wallets
from services.queries import audit_entry_of, incoming_credits
from services.reconcile import reconcile
from services.settlement import settle_partition
from tests.support.invariants import assert_money_invariants
from tests.support.journal import ledger_record
from tests.support.load import fire
from tests.support.seeding import add_user, partitions
from tests.support.settle import apply_credits_here, balances, fund_here, queue_jobs, system_balances


def _settle(db: Any, partition: int) -> Any:
    return settle_partition(db, partition, partitions=partitions(), batch_max=200)


def test_a_cross_partition_credit_is_incoming_until_its_owner_applies_it(db):
    sender, receiver = add_user(db, partition=0), add_user(db, partition=1)
    fund_here(db, [sender], 100)
    job = queue_jobs(db, [Transfer(sender, receiver, 30)])[0]

    drained = _settle(db, 0)
    assert drained.settled == 1 and drained.batches[0].credit_targets == {1}
    # Settled and in the ledger, but not yet in the receiver's balance: it is "incoming".
    assert db.jobs.find_one({"_id": job["_id"]})["status"] == "settled"
    assert balances(db, [sender, receiver]) == {sender: 70, receiver: 0}
    assert incoming_credits(db, receiver, partitions()) == 30
    credit = db.credits.find_one({"to": 1, "applied": False})
    assert credit["from"] == 0 and credit["amounts"] == [{"walletId": receiver, "amount": 30}]
    # The ledger is true at this instant too: balance + unapplied credits == ledger.
    mid = reconcile(db)
    assert mid.ok, mid.as_dict()
    assert mid.unapplied_credits == 30 and mid.total_balance == 0

    applied = _settle(db, 1)
    assert applied.batches[0].credits_applied == 1 and applied.settled == 0
    assert balances(db, [sender, receiver]) == {sender: 70, receiver: 30}
    assert incoming_credits(db, receiver, partitions()) == 0
    assert db.credits.find_one({"_id": credit["_id"]})["applied"] is True
    # The owner's audit block records the credit it applied.
    block = db.auditlogs.find_one({"partition": 1, "creditsIn.creditId": credit["_id"]})
    assert block is not None and block["jobs"] == []
    assert_money_invariants(db)


def test_the_balance_view_never_counts_a_credit_applied_mid_read_twice(db, monkeypatch):
    # The owner applies the credit between the view's reads of credits and wallet: the
    # torn pair would say balance 30 + incoming 30 (the Try-it CI failure).
    sender, receiver = add_user(db, partition=0), add_user(db, partition=1)
    fund_here(db, [sender], 100)
    queue_jobs(db, [Transfer(sender, receiver, 30)])
    _settle(db, 0)
    read_credits, applied = wallets.incoming_credits, []

    def credits_then_apply(*args: Any) -> int:
        found = read_credits(*args)
        if not applied:
            applied.append(_settle(db, 1).batches[0].credits_applied)
        return found

    monkeypatch.setattr(wallets, "incoming_credits", credits_then_apply)
    seen = wallets.balance(db, receiver, partitions())
    assert applied == [1]
    assert (seen.balance, seen.incoming) == (30, 0)
    assert_money_invariants(db)


def test_a_balance_read_that_never_finds_the_wallet_still_refuses_a_torn_answer(db, monkeypatch):
    receiver = add_user(db, partition=1)

    def credits_while_the_wallet_moves(*args: Any) -> int:
        db.wallets.update_one({"_id": receiver}, {"$inc": {"version": 1}})
        return 0

    monkeypatch.setattr(wallets, "incoming_credits", credits_while_the_wallet_moves)
    with pytest.raises(wallets.ConsistentReadError):
        wallets.balance(db, receiver, partitions())


def test_a_credit_is_applied_exactly_once_by_concurrent_and_repeated_settlers(db):
    sender, receiver = add_user(db, partition=2), add_user(db, partition=3)
    fund_here(db, [sender], 500)
    queue_jobs(db, [Transfer(sender, receiver, 7) for _ in range(20)])
    _settle(db, 2)
    seq_before = db.partitions.find_one({"_id": 3})["seq"] if db.partitions.find_one({"_id": 3}) else 0

    # Four threads draining the owner partition three times each, released together.
    fire(lambda _: [_settle(db, 3) for _ in range(3)], range(4), workers=4)
    assert balances(db, [sender, receiver]) == {sender: 360, receiver: 140}
    assert db.credits.count_documents({"to": 3, "applied": True}) == 1
    # One batch applied it; the eleven other drains found nothing and wrote nothing.
    assert db.partitions.find_one({"_id": 3})["seq"] == seq_before + 1
    assert_money_invariants(db)


def test_system_wallets_are_per_partition_buckets_summing_to_the_platform_figure(db):
    creator = add_user(db, partition=0)
    fans = [add_user(db, partition=p) for p in range(4)]
    fund_here(db, fans, 1000)
    queue_jobs(db, [Gift(fan, creator, 333) for fan in fans])
    for p in range(4):
        _settle(db, p)
    apply_credits_here(db)

    buckets = {parse_bucket(w["_id"]): w["balance"] for w in db.wallets.find({"system": "platform:revenue"})}
    # 333 coins split 8000/1500/500 -> creator 266, revenue 50, processing 17 (table, not split()).
    assert {k: v for k, v in buckets.items()} == {("platform:revenue", p): 50 for p in range(4)}
    totals = system_balances(db)
    assert totals["platform:revenue"] == 200 and totals["platform:processing"] == 68
    assert totals["external:funding"] == -4000
    assert balances(db, [creator])[creator] == 4 * 266
    assert set(totals) == set(SYSTEM_WALLETS)
    assert wallets.platform_balances(db, partitions()) == totals  # the admin route's reader
    assert_money_invariants(db)


class _WalletWrites(monitoring.CommandListener):
    """Records the wallet ids each ``update`` command on ``wallets`` targets."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update" and event.command.get("update") == "wallets":
            self.targets += [u["q"]["_id"] for u in event.command["updates"]]

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_a_partition_writes_only_the_balances_it_owns(db):
    n = partitions()
    creators = [add_user(db, partition=p) for p in range(n)]
    fans = [add_user(db, partition=p) for p in range(n)]
    fund_here(db, fans, 1000)
    queue_jobs(db, [Gift(fan, creators[(i + 1) % n], 100) for i, fan in enumerate(fans)]
               + [Transfer(fan, creators[(i + 2) % n], 10) for i, fan in enumerate(fans)])
    listener = _WalletWrites()
    client: MongoClient = MongoClient(db.client.address[0], db.client.address[1], retryWrites=False,
                                      directConnection=True, event_listeners=[listener], tz_aware=True)
    try:
        mine = client[db.name]
        for p in range(n):
            listener.targets.clear()
            _settle(mine, p)
            owned = {w for w in listener.targets if (parse_bucket(w) or (None, partition_of(w, n)))[1] == p}
            assert listener.targets and set(listener.targets) == owned, (p, listener.targets)
    finally:
        client.close()
    apply_credits_here(db)
    assert sum(balances(db, creators).values()) == n * (80 + 10)
    assert_money_invariants(db)


def test_settlers_of_different_partitions_never_conflict(db):
    """Four settlers at once, every job crediting one creator and the platform: 0 retries."""
    creator = add_user(db, partition=0)
    fans = [add_user(db, partition=p) for p in (0, 1, 2, 3) for _ in range(5)]
    fund_here(db, fans, 1000)
    queue_jobs(db, [Gift(fan, creator, 10 + i) for i, fan in enumerate(fans) for _ in range(6)])
    results = dict(zip(range(4), fire(lambda p: settle_partition(db, p, partitions=partitions(), batch_max=5),
                                      range(4), workers=4), strict=True))
    assert sum(r.settled for r in results.values()) == len(fans) * 6
    assert sum(b.retries for r in results.values() for b in r.batches) == 0
    apply_credits_here(db)
    assert_money_invariants(db)


def test_a_job_points_at_the_audit_block_that_lists_it(db):
    sender, receiver = add_user(db, partition=1), add_user(db, partition=1)
    fund_here(db, [sender], 50)
    jobs = queue_jobs(db, [Transfer(sender, receiver, 20) for _ in range(3)])
    _settle(db, 1)
    blocks = {audit_entry_of(db, j["_id"])[0]["seq"] for j in jobs}
    assert len(blocks) == 1  # one batch, one block
    entry, record = audit_entry_of(db, jobs[2]["_id"])
    assert [r["outcome"] for r in entry["jobs"]] == ["settled", "settled", "failed"]
    assert record["code"] == "INSUFFICIENT_FUNDS"
    assert ledger_record(db, {"_id": jobs[0]["_id"]})["auditSeq"] == entry["seq"]
    assert_money_invariants(db)


def test_the_sweeper_rings_the_owner_of_a_credit_whose_doorbell_was_lost(db):
    """A settler killed between its commit and ringing the credit's owner loses nothing."""
    import time
    from datetime import timedelta

    from ledger.timeutil import utcnow
    from tasks.maintenance import sweep

    sender, receiver = add_user(db, partition=0), add_user(db, partition=1)
    fund_here(db, [sender], 100)
    queue_jobs(db, [Transfer(sender, receiver, 45)])
    _settle(db, 0)  # committed; nobody rings partition 1 (as if the settler died right after)
    db.credits.update_many({"to": 1}, {"$set": {"createdAt": utcnow() - timedelta(seconds=30)}})
    sweep.apply_async(queue="purser.default")
    deadline = time.monotonic() + 60
    while db.credits.count_documents({"to": 1, "applied": False}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert balances(db, [sender, receiver]) == {sender: 55, receiver: 45}
    assert_money_invariants(db)
