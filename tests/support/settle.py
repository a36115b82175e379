"""Settlement driven from the test process: queue jobs, ring, settle here, read balances.

Used by the settlement and subscription suites over the session stack's real
stores and workers. Modules that create the Celery app (``tasks.*``) are imported
lazily, inside functions, so importing this module reads no environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pymongo.database import Database

from ledger.operations import Credit, Operation
from tests.support.seeding import partitions
from tests.support.waiting import wait_drained


def noop_ring(partition: int, request_id: str | None = None) -> None:
    """A doorbell that is never published (a lost message)."""


def live_ring() -> Any:
    """``tasks.settle.ring``, after checking the Celery app talks to the test Redis."""
    import tasks.settle
    from workers.celery_app import app

    assert app.conf.broker_url == os.environ["REDIS_URL"], "Celery app was created before the stores started"
    return tasks.settle.ring


def doorbell(partition: int) -> None:
    """One raw settle message for ``partition`` (no ring-flag deduplication)."""
    from tasks.settle import settle

    settle.apply_async(args=[partition], queue=f"ledger.{partition}")


def submit(db: Database, op: Operation, owner: str | None = None, ring: Any = None, **kw: Any) -> dict[str, Any]:
    from services.jobs import submit as submit_job

    return submit_job(db, op, owner or op.wallet, partitions=partitions(), ring=ring or live_ring(), **kw)


def queue_jobs(db: Database, ops: Iterable[Operation], now: datetime | None = None) -> list[dict[str, Any]]:
    """Insert queued jobs in this order without ringing (fast ``insert_many``)."""
    from services.jobs import build_job

    jobs = [build_job(op, op.wallet, partitions(), None, None, now=now) for op in ops]
    if jobs:
        db.jobs.insert_many(jobs, ordered=True)
    return jobs


def ring_credit_owners(db: Database) -> None:
    """Ring every partition owed a deferred credit (what beat's sweeper would do)."""
    for p in db.credits.distinct("to", {"applied": False}):
        doorbell(p)


def wait_jobs(db: Database, job_ids: Iterable[str], timeout: float = 90.0) -> dict[str, dict[str, Any]]:
    """Wait until every job is terminal and its deferred credits applied; return the jobs by id.

    No beat runs in these suites: the owners of credits left by settles in this
    process are rung from here while waiting.
    """
    ids = list(job_ids)
    wait_drained(db, job_ids=ids, timeout=timeout, kick=lambda: ring_credit_owners(db))
    return {j["_id"]: j for j in db.jobs.find({"_id": {"$in": ids}})}


def fund(db: Database, user_ids: Iterable[str], amount: int, timeout: float = 90.0) -> None:
    """Credit each wallet through real settled jobs and wait for them."""
    jobs = queue_jobs(db, [Credit(u, amount, "test funding") for u in user_ids])
    for p in sorted({j["partition"] for j in jobs}):
        doorbell(p)
    done = wait_jobs(db, [j["_id"] for j in jobs], timeout)
    assert all(j["status"] == "settled" for j in done.values()), [j["error"] for j in done.values()]


def balance(db: Database, wallet_id: str) -> int:
    """A wallet's balance; a system wallet's is the sum of its partition buckets."""
    return balances(db, [wallet_id])[wallet_id]


def system_balances(db: Database) -> dict[str, int]:
    """The platform's figure per system wallet: the sum of every bucket document carrying
    its name, found by field rather than by id, so it checks the production reader
    (``services.wallets.platform_balances``, point reads by bucket id) independently."""
    from ledger.money import SYSTEM_WALLETS

    totals = dict.fromkeys(SYSTEM_WALLETS, 0)
    for row in db.wallets.aggregate([{"$match": {"system": {"$in": list(SYSTEM_WALLETS)}}},
                                     {"$group": {"_id": "$system", "sum": {"$sum": "$balance"}}}]):
        totals[row["_id"]] = row["sum"]
    return totals


def balances(db: Database, wallet_ids: Iterable[str]) -> dict[str, int]:
    from ledger.money import is_system_wallet

    ids = list(wallet_ids)
    out = {w["_id"]: w["balance"] for w in db.wallets.find({"_id": {"$in": ids}}, {"balance": 1})}
    if any(is_system_wallet(i) for i in ids):
        out.update({k: v for k, v in system_balances(db).items() if k in ids})
    return out


def entries_of(tx: dict[str, Any]) -> list[tuple[str, int]]:
    return sorted((e["walletId"], e["amount"]) for e in tx["entries"])


def settle_here(db: Database, partition: int) -> Any:
    """Settle a partition in this process (the real service code, no worker involved).

    For tests that must know no worker touches the partition meanwhile: a worker's
    drain loop takes one more look at the queue after its last batch, and would
    race with jobs queued right after it finished.
    """
    from services.settlement import settle_partition

    drained = settle_partition(db, partition, partitions=partitions(), batch_max=200)
    apply_credits_here(db)
    return drained


def apply_credits_here(db: Database) -> None:
    """Settle, in this process, every partition owed a deferred credit (as its doorbell would)."""
    from services.settlement import settle_partition

    while targets := db.credits.distinct("to", {"applied": False}):
        for p in targets:
            settle_partition(db, p, partitions=partitions(), batch_max=200)


def fund_here(db: Database, user_ids: Iterable[str], amount: int) -> None:
    jobs = queue_jobs(db, [Credit(u, amount, "test funding") for u in user_ids])
    for p in sorted({j["partition"] for j in jobs}):
        settle_here(db, p)
    done = wait_jobs(db, [j["_id"] for j in jobs], timeout=5)
    assert all(j["status"] == "settled" for j in done.values())
