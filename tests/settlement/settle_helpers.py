"""Helpers for the settlement and subscription suites (real stores, real workers).

Modules that create the Celery app (``tasks.*``) are imported lazily, inside
functions: the app reads ``REDIS_URL`` when it is first imported, and the stack
fixtures set that variable only once the stores run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.database import Database

from ledger.operations import Credit, Operation, partition_of
from ledger.timeutil import utcnow

TERMINAL = ("settled", "failed")


def partitions() -> int:
    from infra.config import get_settings

    return get_settings().ledger_partitions


def new_id(partition: int | None = None) -> str:
    """A fresh 24-hex id, optionally one whose wallet falls in ``partition``."""
    while True:
        candidate = str(ObjectId())
        if partition is None or partition_of(candidate, partitions()) == partition:
            return candidate


def add_user(db: Database, partition: int | None = None, role: str = "free") -> str:
    """A user and an empty wallet, inserted directly (no password hashing)."""
    user_id = new_id(partition)
    now = utcnow()
    db.users.insert_one({"_id": user_id, "email": f"{user_id}@example.com", "passwordHash": "x", "role": role,
                         "displayName": None, "accountStatus": "active", "createdAt": now})
    db.wallets.insert_one({"_id": user_id, "userId": user_id, "balance": 0, "status": "active", "version": 0,
                           "createdAt": now, "lastTransactionAt": None})
    return user_id


def add_users(db: Database, count: int, partition: int | None = None) -> list[str]:
    ids = [new_id(partition) for _ in range(count)]
    now = utcnow()
    db.users.insert_many([{"_id": i, "email": f"{i}@example.com", "passwordHash": "x", "role": "free",
                           "displayName": None, "accountStatus": "active", "createdAt": now} for i in ids])
    db.wallets.insert_many([{"_id": i, "userId": i, "balance": 0, "status": "active", "version": 0,
                             "createdAt": now, "lastTransactionAt": None} for i in ids])
    return ids


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


def wait_jobs(db: Database, job_ids: Iterable[str], timeout: float = 90.0) -> dict[str, dict[str, Any]]:
    """Poll until every job is settled or failed; return them by id."""
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    next_ring = time.monotonic() + 1.0
    while True:
        if time.monotonic() > next_ring:
            # No beat runs in these suites: ring owners of credits left by in-process settles.
            for p in db.credits.distinct("to", {"applied": False}):
                doorbell(p)
            next_ring = time.monotonic() + 1.0
        # A job not stored yet (e.g. a renewal the tick has yet to insert) counts as pending.
        pending = len(ids) - db.jobs.count_documents({"_id": {"$in": ids}, "status": {"$in": list(TERMINAL)}})
        # Balances are final once the credits the jobs deferred to other partitions are applied.
        if not pending and not db.credits.count_documents({"applied": False}, limit=1):
            return {j["_id"]: j for j in db.jobs.find({"_id": {"$in": ids}})}
        if time.monotonic() > deadline:
            raise AssertionError(f"{pending} of {len(ids)} job(s) not terminal after {timeout}s")
        time.sleep(0.1)


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


def balances(db: Database, wallet_ids: Iterable[str]) -> dict[str, int]:
    from ledger.money import is_system_wallet
    from services.reconcile import system_balances

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
