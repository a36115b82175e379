"""Settle the queued jobs of one partition: batched, exactly once, in order.

The runner. One batch = one MongoDB transaction in three steps:

1. read (``services/batch_read.py``): the partition's inbound credits, its queued
   jobs, its head and the state the jobs touch;
2. decide and plan, pure (``ledger/decide.py``, ``ledger/write_plan.py``): every
   outcome, then every document write: ledger transactions, merged increments of the
   wallets this partition owns (``ledger.routing``: single writer per balance, system
   wallets as per-partition buckets), insert-only credits for wallets other partitions
   own, the inbound credits marked applied, entitlements, subscription changes, ONE
   hash-chained audit block, job outcomes and the partition's sequence;
3. write (``services/batch_write.py``); on contention (a write conflict or a refused
   ``head``/``state`` guard) decide again. A broken invariant (a refused balance guard,
   an unbalanced plan) is never retried: the job that causes it is held queued, with
   an error line and ``purser_settle_broken_invariants``.

Exactly once: a job leaves ``queued`` only in the transaction that applies its
effects, and that transaction read it as ``queued`` (snapshot isolation turns a
concurrent change into a write conflict). Two settlers of the same partition both
bump ``partitions.<p>.seq`` under a ``seq`` guard and so conflict; the loser retries
and finds the jobs already done. ``transactions.jobId`` is unique as a last line.
A redelivered doorbell therefore finds nothing to do.
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
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from infra import metrics
from ledger.decide import INTERNAL_ERROR, Failed, Outcome, WalletState, decide_batch, failed
from ledger.routing import Router, merge_credits
from ledger.timeutil import utcnow
from ledger.write_plan import PartitionHead, credit_amounts, plan_batch
from ledger.writes import BrokenInvariant
from services.batch_read import (
    PoisonJob,
    ensure_partition,
    has_queued,
    inbound,
    load_snapshot,
    operation_of,
    partition_head,
    queued,
    queued_job,
)
from services.batch_write import Conflict, execute

__all__ = ["BatchResult", "DrainResult", "PersistentDuplicate", "PoisonJob", "credit_amounts", "ensure_partition",
           "fail_job", "has_queued", "load_snapshot", "settle_partition"]

log = logging.getLogger("purser.settlement")

Clock = Callable[[], datetime]
MAX_CONFLICT_RETRIES = 50
DUPLICATE_RETRIES = 3
ISOLATION_ATTEMPTS = 2


class _Deadline(Exception):
    """The batch kept conflicting until the drain's time budget ran out: try again later."""


class _Gone(Exception):
    """The job to fail is no longer queued (or its partition has no head)."""


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


# --- the drain -----------------------------------------------------------------------------


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
            batch = _run_batch(db, router, batch_max, clock, None, deadline, frozenset(drained.held))
        except _Deadline:
            drained.more = True
            break
        except (PyMongoError, Conflict, *transient):
            # Store trouble, contention or the worker's own limits: nothing of this batch
            # was applied. The task layer retries; the sweeper is the backstop.
            raise
        except BrokenInvariant as broken:
            # Not contention: deciding the same batch again would meet it again. Find the job.
            _report_broken(partition, broken, None)
            batch = _isolate(db, router, batch_max, clock, deadline, transient, drained.held)
        except Exception:  # noqa: BLE001 - a poison job must not block its partition
            log.exception("batch failed unexpectedly; isolating jobs one by one",
                          extra={"partition": partition})
            batch = _isolate(db, router, batch_max, clock, deadline, transient, drained.held)
        if batch.size == 0 and batch.credits_applied == 0:
            break
        drained.batches.append(batch)
        if on_batch is not None:
            on_batch(batch)
    return drained


def _report_broken(partition: int, broken: BrokenInvariant, job: dict[str, Any] | None) -> None:
    """A broken invariant is an alarm: an error line and a counter, whatever happens next."""

    metrics.record_broken_invariant(broken.guard)
    extra = {"partition": partition, "guard": broken.guard, "detail": broken.detail}
    if job is None:
        log.error("broken invariant in a batch; isolating jobs one by one", extra=extra)
    else:
        log.error("broken invariant: job held queued, nothing of it applied",
                  extra={**extra, "jobId": job["_id"], "requestId": job.get("requestId")})


# --- one batch: read, decide, plan, write; retried on contention --------------------------


def _run_batch(db: Database, router: Router, limit: int, clock: Clock, only: str | None,
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
            raise _Deadline(f"partition {router.partition}: still conflicting after {tries} attempts")
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
    attempt.documents, attempt.targets = _write(db, router, jobs, decision.outcomes, decision.deltas, credits,
                                                head, now, session)
    attempt.jobs, attempt.outcomes, attempt.credits = jobs, decision.outcomes, len(credits)
    attempt.stages = {"read": t1 - t0, "decide": t2 - t1, "write": time.perf_counter() - t2}


def _write(db: Database, router: Router, jobs: list[dict[str, Any]], outcomes: list[Outcome],
           deltas: dict[str, int], credits: list[dict[str, Any]], head: PartitionHead, now: datetime,
           session: ClientSession) -> tuple[int, set[int]]:
    """Plan and execute one decided batch; return (documents written, partitions owed a doorbell)."""
    plan = plan_batch(router, jobs, outcomes, deltas, credits, head, now)
    execute(db, plan, session)
    return plan.documents, plan.targets


# --- failing one job, isolating a poison job --------------------------------------------------


def fail_job(db: Database, router: Router, job: dict[str, Any], code: str, message: str,
             clock: Clock = utcnow) -> BatchResult:
    """Fail one job with an audit record, in a transaction, without touching balances."""
    outcome: Failed = failed(job["_id"], job.get("type", "unknown"), code, message)
    for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
        try:
            with db.client.start_session() as session:
                def body(session: ClientSession) -> None:
                    head = partition_head(db, router.partition, session)
                    current = queued_job(db, job["_id"], session)
                    if not current or head is None:
                        raise _Gone
                    _write(db, router, current, [outcome], {}, [], head, clock(), session)
                session.with_transaction(body)
            return BatchResult(failed=1, outcomes=[(job, outcome)])
        except _Gone:
            return BatchResult()
        except Conflict:
            time.sleep(0.002 * attempt)
    raise RuntimeError(f"could not fail job {job['_id']}")


def _isolate(db: Database, router: Router, batch_max: int, clock: Clock, deadline: float | None,
             transient: tuple[type[BaseException], ...], held: list[str]) -> BatchResult:
    """Retry a failing batch one job at a time; fail only a job that raises deterministically.

    A job is failed when settling it *alone* raises the same exception type on every
    one of ``ISOLATION_ATTEMPTS`` tries (or its parameters cannot be read at all).
    Store errors, conflicts, the time budget and ``transient`` exceptions say nothing
    about the job: they propagate or stop the isolation, and the job stays queued.
    A job that alone breaks an invariant is added to ``held`` and stays queued.
    """
    total = BatchResult()
    for job in queued(db, router.partition, batch_max, None, frozenset(held)):
        if deadline is not None and time.monotonic() > deadline:
            break
        try:
            one = _settle_alone(db, router, job, clock, deadline, transient)
        except BrokenInvariant as broken:
            # Never failed for it: the job may be right and the store wrong. An operator decides.
            _report_broken(router.partition, broken, job)
            held.append(job["_id"])
            continue
        if one is not None:
            total.add(one)
    return total


def _settle_alone(db: Database, router: Router, job: dict[str, Any], clock: Clock, deadline: float | None,
                  transient: tuple[type[BaseException], ...]) -> BatchResult | None:
    """Settle ``job`` as a batch of one; fail it if it raises the same error every time.

    None: the error did not reproduce, so the job stays queued for the next ring.
    """
    errors: list[type[BaseException]] = []
    exc: Exception | None = None
    for _ in range(ISOLATION_ATTEMPTS):
        try:
            return _run_batch(db, router, 1, clock, job["_id"], deadline)
        except (PyMongoError, Conflict, _Deadline, BrokenInvariant, *transient):
            raise
        except PoisonJob as poison:
            exc, errors = poison, [PoisonJob] * ISOLATION_ATTEMPTS
            break
        except Exception as err:  # noqa: BLE001
            exc = err
            errors.append(type(err))
    if len(errors) < ISOLATION_ATTEMPTS or len(set(errors)) != 1:
        return None
    log.error("job failed with an unexpected error", exc_info=exc, extra={
        "partition": router.partition, "jobId": job["_id"], "requestId": job.get("requestId")})
    return fail_job(db, router, job, INTERNAL_ERROR, f"{type(exc).__name__}", clock)


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
