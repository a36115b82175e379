"""When a batch cannot settle: fail one job, isolate a poison job, hold a job that breaks an
invariant (``services/settlement.py`` calls these from its drain)."""

from __future__ import annotations

import logging
import time
from typing import Any

from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import PyMongoError

from infra import metrics
from ledger.decide import INTERNAL_ERROR, Failed, failed
from ledger.routing import Router
from ledger.timeutil import utcnow
from ledger.writes import BrokenInvariant
from services.batch_read import PoisonJob, partition_head, queued, queued_job
from services.batch_runner import MAX_CONFLICT_RETRIES, BatchDeadline, BatchResult, Clock, run_batch, write_decided
from services.batch_write import Conflict

log = logging.getLogger("purser.settlement")

ISOLATION_ATTEMPTS = 2


class _Gone(Exception):
    """The job to fail is no longer queued (or its partition has no head)."""


def report_broken(partition: int, broken: BrokenInvariant, job: dict[str, Any] | None) -> None:
    """A broken invariant is an alarm: an error line and a counter, whatever happens next."""

    metrics.record_broken_invariant(broken.guard)
    extra = {"partition": partition, "guard": broken.guard, "detail": broken.detail}
    if job is None:
        log.error("broken invariant in a batch; isolating jobs one by one", extra=extra)
    else:
        log.error("broken invariant: job held queued, nothing of it applied",
                  extra={**extra, "jobId": job["_id"], "requestId": job.get("requestId")})


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
                    write_decided(db, router, current, [outcome], {}, [], head, clock(), session)
                session.with_transaction(body)
            return BatchResult(failed=1, outcomes=[(job, outcome)])
        except _Gone:
            return BatchResult()
        except Conflict:
            time.sleep(0.002 * attempt)
    raise RuntimeError(f"could not fail job {job['_id']}")


def isolate(db: Database, router: Router, batch_max: int, clock: Clock, deadline: float | None,
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
            report_broken(router.partition, broken, job)
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
            return run_batch(db, router, 1, clock, job["_id"], deadline)
        except (PyMongoError, Conflict, BatchDeadline, BrokenInvariant, *transient):
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
