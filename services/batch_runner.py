"""One settlement batch: read, decide, plan and write in one MongoDB transaction, retried
on contention (``services/settlement.py`` drains a partition batch by batch).

A run of the transaction callback reads (``services/batch_read.py``), decides and plans,
pure (``ledger/decide.py``, ``ledger/write_plan.py``), and writes
(``services/batch_write.py``). A write conflict or a refused ``head``/``state`` guard
is contention: the batch is decided again. A duplicate key that recurs while the
partition's ``seq`` stays unchanged is the batch's own doing (:class:`PersistentDuplicate`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import BulkWriteError, OperationFailure

from ledger.decide import Outcome, WalletState, decide_batch
from ledger.routing import Router, merge_credits
from ledger.write_plan import PartitionHead, credit_amounts, plan_batch
from services.batch_read import inbound, load_snapshot, operation_of, partition_head, queued, queued_job
from services.batch_write import Conflict, execute

log = logging.getLogger("purser.settlement")

Clock = Callable[[], datetime]
MAX_CONFLICT_RETRIES = 50
DUPLICATE_RETRIES = 3


class BatchDeadline(Exception):
    """The batch kept conflicting until the drain's time budget ran out: try again later."""


class PersistentDuplicate(Exception):
    """A unique index keeps refusing a batch's write while no one else settles the partition.

    A duplicate key from a concurrent settler of the partition moves its ``seq`` and
    disappears once the batch is decided again. One that recurs with the ``seq``
    unchanged comes from a job itself (e.g. a second top-up for an already settled
    ``providerTxId`` after its idempotency key expired): the batch is then isolated
    and that job failed. Deliberately not a ``PyMongoError``, which is retried forever.
    """


@dataclass
class BatchResult:
    settled: int = 0
    failed: int = 0
    outcomes: list[tuple[dict[str, Any], Outcome]] = field(default_factory=list)
    retries: int = 0
    duration: float = 0.0
    credits_applied: int = 0  # inbound credit documents applied by this batch
    documents: int = 0  # documents written by the committed attempt
    credit_targets: set[int] = field(default_factory=set)  # partitions owed a doorbell
    stages: dict[str, float] = field(default_factory=dict)  # read / decide / write seconds

    @property
    def size(self) -> int:
        return self.settled + self.failed

    def add(self, other: BatchResult) -> None:
        """Fold a one-job batch of an isolation run into this one."""
        self.settled += other.settled
        self.failed += other.failed
        self.outcomes += other.outcomes
        self.documents += other.documents
        self.credit_targets |= other.credit_targets



@dataclass
class _Attempt:
    """What one run of the transaction callback read, decided and wrote.

    Reset at every run: only the committed run's figures reach the :class:`BatchResult`.
    """

    seq: int | None = None  # the partition sequence read (tells a self-inflicted duplicate)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    credits: int = 0
    documents: int = 0
    targets: set[int] = field(default_factory=set)
    stages: dict[str, float] = field(default_factory=dict)

    def result(self, calls: int, started: float) -> BatchResult:
        # Every re-run of the callback is a retry: the runner's own and those with_transaction
        # makes itself on a WriteConflict, which never reach the runner (contention stays visible).
        return BatchResult(
            settled=sum(1 for o in self.outcomes if o.ok), failed=sum(1 for o in self.outcomes if not o.ok),
            outcomes=list(zip(self.jobs, self.outcomes, strict=True)), retries=calls - 1,
            duration=time.perf_counter() - started, credits_applied=self.credits, documents=self.documents,
            credit_targets=set(self.targets), stages=self.stages)


def run_batch(db: Database, router: Router, limit: int, clock: Clock, only: str | None,
               deadline: float | None = None, skip: frozenset[str] = frozenset()) -> BatchResult:
    """Decide and write one batch in one transaction, retrying on conflicts."""
    started = time.perf_counter()
    calls = 0  # every run of the callback, including with_transaction's own transient retries
    duplicates = 0
    attempt = _Attempt()
    for tries in range(1, MAX_CONFLICT_RETRIES + 1):
        def body(session: ClientSession) -> None:
            nonlocal calls, attempt
            calls += 1
            attempt = _Attempt()
            _settle_once(db, router, limit, clock, only, skip, session, attempt)

        try:
            with db.client.start_session() as session:
                session.with_transaction(body)
            return attempt.result(calls, started)
        except Conflict as exc:
            if tries >= MAX_CONFLICT_RETRIES:
                raise
            log.debug("settle conflict, retrying", extra={"partition": router.partition, "reason": str(exc)})
        except OperationFailure as exc:
            duplicates += _contended(db, router.partition, exc, attempt.seq, tries)
            if duplicates >= DUPLICATE_RETRIES:
                raise PersistentDuplicate(str(exc)) from exc
        if deadline is not None and time.monotonic() > deadline:
            # Bounded: a batch that keeps conflicting must not outlive the task's limits.
            raise BatchDeadline(f"partition {router.partition}: still conflicting after {tries} attempts")
        time.sleep(min(0.002 * tries, 0.05) * (1 + random.random()))
    raise AssertionError("unreachable: the last conflict retry raises")


def _contended(db: Database, partition: int, exc: OperationFailure, seq: int | None, tries: int) -> int:
    """1 for a duplicate key the batch caused itself, 0 for contention; re-raise anything else.

    A duplicate key or write conflict surfacing as a plain error means another settler
    committed first; deciding again finds the jobs already done. A duplicate with the
    partition's ``seq`` unchanged since this attempt read it has no other settler to
    blame: the batch collides with itself or with settled history.
    """
    if not (_is_conflict(exc) and tries < MAX_CONFLICT_RETRIES):
        raise exc
    return int(_is_duplicate(exc) and _partition_unchanged(db, partition, seq))


def _settle_once(db: Database, router: Router, limit: int, clock: Clock, only: str | None,
                 skip: frozenset[str], session: ClientSession, attempt: _Attempt) -> None:
    """One run of the transaction callback; fills ``attempt`` with what it did."""
    t0 = time.perf_counter()
    if only is not None:
        jobs, credits = queued_job(db, only, session), []
    else:
        jobs, credits = queued(db, router.partition, limit, session, skip), inbound(db, router.partition, session)
    if not jobs and not credits:
        return
    head = partition_head(db, router.partition, session)
    if head is None:
        raise Conflict("partition document missing")
    attempt.seq = head.seq
    ops = [(job["_id"], operation_of(job)) for job in jobs]
    credited = merge_credits(credit_amounts(c) for c in credits)
    snapshot = load_snapshot(db, [op for _, op in ops], router, session, sorted(credited))
    for wallet_id, amount in credited.items():
        # Credits are applied before this batch's own jobs are decided: they are spendable now.
        snapshot.wallets.setdefault(wallet_id, WalletState(0)).balance += amount
    t1 = time.perf_counter()
    now = clock()
    decision = decide_batch(ops, snapshot, now)
    t2 = time.perf_counter()
    attempt.documents, attempt.targets = write_decided(db, router, jobs, decision.outcomes, decision.deltas, credits,
                                                head, now, session)
    attempt.jobs, attempt.outcomes, attempt.credits = jobs, decision.outcomes, len(credits)
    attempt.stages = {"read": t1 - t0, "decide": t2 - t1, "write": time.perf_counter() - t2}


def write_decided(db: Database, router: Router, jobs: list[dict[str, Any]], outcomes: list[Outcome],
           deltas: dict[str, int], credits: list[dict[str, Any]], head: PartitionHead, now: datetime,
           session: ClientSession) -> tuple[int, set[int]]:
    """Plan and execute one decided batch; return (documents written, partitions owed a doorbell)."""
    plan = plan_batch(router, jobs, outcomes, deltas, credits, head, now)
    execute(db, plan, session)
    return plan.documents, plan.targets



# --- telling contention from errors -------------------------------------------------------


def _error_codes(exc: OperationFailure) -> set[Any]:
    codes = {exc.code}
    if isinstance(exc, BulkWriteError):
        codes |= {err.get("code") for err in exc.details.get("writeErrors", [])}
    return codes


def _is_conflict(exc: OperationFailure) -> bool:
    return bool(_error_codes(exc) & {11000, 112, 251})


def _is_duplicate(exc: OperationFailure) -> bool:
    return 11000 in _error_codes(exc)


def _partition_unchanged(db: Database, partition: int, seq: int | None) -> bool:
    if seq is None:
        return False
    doc = db.partitions.find_one({"_id": partition}, {"seq": 1})
    return doc is not None and doc.get("seq") == seq

