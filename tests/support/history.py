"""Histories settled with a controlled clock, and the brute-force replays that check money over time.

:func:`settle_at` queues one job and settles it in this process with the clock at a
chosen instant (``services.settlement.settle_partition``, the settler's own code), then
applies the credits it left; nothing else runs meanwhile, so a history can span months
in a second. The replays read every transaction or payout: the reference that
checkpoints, statements and reports must equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pymongo.database import Database

from ledger.history import RELEASING
from services.jobs import build_job
from tests.support.journal import ledger_records
from tests.support.seeding import partitions


def settle_at(db: Database, op: Any, at: datetime, job_id: str | None = None, *,
              expect: str | None = "settled") -> dict[str, Any]:
    """Queue ``op`` and settle it (and the credits it leaves) with the clock at ``at``; the job.

    ``expect=None`` accepts any terminal status (a generated history asks for things the
    rules refuse: those jobs fail and write no ledger entry).
    """
    from services.settlement import settle_partition

    job = build_job(op, op.wallet, partitions(), None, None, job_id)
    db.jobs.insert_one(job)
    settle_partition(db, job["partition"], partitions=partitions(), batch_max=200, clock=lambda: at)
    while targets := db.credits.distinct("to", {"applied": False}):
        for p in targets:
            settle_partition(db, p, partitions=partitions(), batch_max=200, clock=lambda: at)
    done = db.jobs.find_one({"_id": job["_id"]})
    assert done is not None and done["status"] in ("settled", "failed"), done
    if expect is not None:
        assert done["status"] == expect, done.get("error")
    return done


def replay_balance(db: Database, wallet: str, at: datetime) -> int:
    """``wallet``'s ledger replayed to ``at`` (inclusive), by brute force."""
    return sum(e["amount"] for tx in ledger_records(db, {"createdAt": {"$lte": at}})
               for e in tx["entries"] if e["walletId"] == wallet)


def replay_held(db: Database, wallet: str, at: datetime) -> int:
    """What ``wallet``'s payouts held at ``at``: held from the hold until an event released it."""
    held = 0
    for payout in db.payouts.find({"userId": wallet}):
        if payout["createdAt"] > at:
            continue
        released = any(e.get("status") in RELEASING and e["at"] <= at for e in payout.get("events", ()))
        held += 0 if released else payout["amount"]
    return held


def broker_ring(redis_url: str) -> Callable[..., None]:
    """A doorbell into a stack's broker, for the schedule tick run in this process (the
    process-wide Celery app may have been built for another suite's Redis)."""
    from infra.config import get_settings
    from infra.queues import partition_queue
    from workers.celery_app import create_celery

    app = create_celery(dataclasses.replace(get_settings(), redis_url=redis_url))

    def ring(partition: int, request_id: str | None = None) -> None:
        app.send_task("ledger.settle", args=[partition], queue=partition_queue(partition))

    return ring
