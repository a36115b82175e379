"""Settle the queued jobs of one partition: batched, exactly once, in order.

The drain. One batch (``services/batch_runner.py``) = one MongoDB transaction in three steps:

1. read (``services/batch_read.py``): the partition's inbound credits, its queued
   jobs, its head and the state the jobs touch;
2. decide and plan, pure (``ledger/decide.py``, ``ledger/write_plan.py``): every
   outcome, then every document write: job outcomes carrying their ledger entries, merged increments of the
   wallets this partition owns (``ledger.routing``: single writer per balance, system
   wallets as per-partition buckets), insert-only credits for wallets other partitions
   own, the inbound credits marked applied, entitlements, subscription changes, ONE
   hash-chained audit block and the partition's sequence;
3. write (``services/batch_write.py``); on contention (a write conflict or a refused
   ``head``/``state`` guard) decide again. A broken invariant (a refused balance guard,
   an unbalanced plan) is never retried: the job that causes it is held queued, with
   an error line and ``purser_settle_broken_invariants`` (``services/batch_isolation.py``,
   which also fails a poison job).

Exactly once: a job leaves ``queued`` only in the transaction that applies its
effects, and that transaction read it as ``queued`` (snapshot isolation turns a
concurrent change into a write conflict). Two settlers of the same partition both
bump ``partitions.<p>.seq`` under a ``seq`` guard and so conflict; the loser retries
and finds the jobs already done. A settled job is its own ledger record, so there is
no second document that could be written twice (``transactions.jobId`` unique was the
last line while records were separate; ``ledger/write_plan.job_update``).
A redelivered doorbell therefore finds nothing to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pymongo.database import Database
from pymongo.errors import PyMongoError

from ledger.routing import Router
from ledger.timeutil import utcnow
from ledger.writes import BrokenInvariant
from services.batch_isolation import isolate, report_broken
from services.batch_read import ensure_partition
from services.batch_runner import BatchDeadline, BatchResult, Clock, run_batch
from services.batch_write import Conflict

log = logging.getLogger("purser.settlement")


@dataclass
class DrainResult:
    batches: list[BatchResult] = field(default_factory=list)
    more: bool = False  # stopped on the time budget with jobs possibly left (not set by held jobs)
    held: list[str] = field(default_factory=list)  # jobs left queued on a broken invariant

    @property
    def settled(self) -> int:
        return sum(b.settled for b in self.batches)

    @property
    def failed(self) -> int:
        return sum(b.failed for b in self.batches)


def settle_partition(
    db: Database, partition: int, *,
    partitions: int,
    batch_max: int,
    clock: Clock = utcnow,
    on_batch: Callable[[BatchResult], None] | None = None,
    time_budget: float | None = None,
    transient: tuple[type[BaseException], ...] = ()) -> DrainResult:
    """Settle batches (inbound credits first) until the partition has nothing left.

    With ``time_budget`` (seconds) it stops between batches once the budget is
    spent and sets ``DrainResult.more``: the caller rings again instead of running
    into a hard time limit. ``transient`` names exceptions that say the *worker*
    is in trouble, not a job (Celery's ``SoftTimeLimitExceeded``): they propagate
    and never fail a job. A job that breaks an invariant is *held*: left queued and
    skipped for the rest of the drain (``DrainResult.held``). Held jobs do not set
    ``more``: ringing again at once would only meet the same refusal in a loop; the
    sweeper tries them again on its tick, each try logged at ERROR for an operator.
    """
    router = Router(partition, partitions)
    ensure_partition(db, partition)
    drained = DrainResult()
    deadline = None if time_budget is None else time.monotonic() + time_budget
    while True:
        if deadline is not None and time.monotonic() > deadline:
            drained.more = True
            break
        try:
            batch = run_batch(db, router, batch_max, clock, None, deadline, frozenset(drained.held))
        except BatchDeadline:
            drained.more = True
            break
        except (PyMongoError, Conflict, *transient):
            # Store trouble, contention or the worker's own limits: nothing of this batch
            # was applied. The task layer retries; the sweeper is the backstop.
            raise
        except BrokenInvariant as broken:
            # Not contention: deciding the same batch again would meet it again. Find the job.
            report_broken(partition, broken, None)
            batch = isolate(db, router, batch_max, clock, deadline, transient, drained.held)
        except Exception:  # noqa: BLE001 - a poison job must not block its partition
            log.exception("batch failed unexpectedly; isolating jobs one by one",
                          extra={"partition": partition})
            batch = isolate(db, router, batch_max, clock, deadline, transient, drained.held)
        if batch.size == 0 and batch.credits_applied == 0:
            break
        drained.batches.append(batch)
        if on_batch is not None:
            on_batch(batch)
    return drained
