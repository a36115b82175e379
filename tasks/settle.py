"""The settle task and the doorbell that rings it."""

from __future__ import annotations

import functools
import logging

from celery.exceptions import SoftTimeLimitExceeded
from pymongo.database import Database
from pymongo.errors import PyMongoError

from infra import context, metrics
from infra.announce import announce_batch
from infra.backlog import limits as backlog_limits
from infra.config import get_settings
from infra.mongo import get_db
from infra.queues import partition_queue
from infra.redis_client import get_redis
from ledger.decide import Settled
from services import backlog as backlog_store
from services.batch_runner import BatchResult
from services.jobs import ring_safely
from services.settlement import settle_partition
from tasks.webhooks import notify as notify_webhooks
from workers.celery_app import get_celery, task

log = logging.getLogger("purser.settle")

RING_FLAG_TTL = 30
PAYOUT_SUBMIT_TASK = "payouts.submit"  # tasks/payouts.py


def _ring_flag(partition: int) -> str:
    return f"purser:ring:{partition}"


def ring(partition: int, request_id: str | None = None, *, force: bool = False) -> None:
    """Publish a doorbell for ``partition`` unless one is already waiting.

    The flag is set before publishing and cleared by the task *before* it reads the
    queue, so a job inserted before a skipped ring is always seen by the waiting
    task. A lost message leaves the flag to expire; the sweeper rings with force.
    """
    if not force and not get_redis().set(_ring_flag(partition), 1, nx=True, ex=RING_FLAG_TTL):
        return
    try:
        for _ in range(_doorbell_copies()):
            settle.apply_async(args=[partition], queue=partition_queue(partition),
                               headers={"requestId": request_id})
    except Exception:
        # A flag without a message would silence every ring of the partition for
        # RING_FLAG_TTL seconds, leaving its jobs to the sweeper: take it back.
        _clear_flag(partition)
        raise


def _clear_flag(partition: int) -> None:
    try:
        get_redis().delete(_ring_flag(partition))
    except Exception:  # noqa: BLE001 - the flag is an optimisation only; it expires by itself
        log.warning("could not clear the ring flag", exc_info=True)


def _doorbell_copies() -> int:
    """TEST-ONLY fault injection (tests/chaos): PURSER_DUPLICATE_DOORBELLS=1 publishes every
    doorbell twice, as a broker redelivery or a doubled publish would. Inert in production,
    which also refuses to start with the variable set (infra/config.py)."""
    settings = get_settings()
    return 2 if settings.duplicate_doorbells and not settings.is_production else 1


def _record(db: Database, partition: int, batch: BatchResult) -> None:
    announce_batch(batch)  # first, after the commit: wakes waiting clients; never raises
    _publish_backlog(db, partition, batch)
    # Credits this batch deferred to other partitions: ring their owners now, so a
    # receiver's money is spendable well under a second later (the sweeper backs it up).
    for target in sorted(batch.credit_targets):
        ring_safely(ring, target, None)
    metrics.record_batch(batch)
    _submit_payouts(batch)
    notify_webhooks(batch)  # job events are derived from the committed audit block; never raises
    for job, outcome in batch.outcomes:
        with context.bound(requestId=job.get("requestId"), jobId=job["_id"], userId=job.get("ownerId"),
                           partition=job.get("partition")):
            if outcome.ok:
                log.info("job settled", extra={"jobType": job["type"]})
            else:
                log.info("job failed", extra={"jobType": job["type"], "code": outcome.code})


def _publish_backlog(db: Database, partition: int, batch: BatchResult) -> None:
    """What is left in the partition, for the web's backlog limit and the gauges. Never raises."""
    try:
        load = backlog_store.publish_after_batch(db, get_redis(), partition, batch.size, batch.duration)
        metrics.record_loads([load], backlog_limits(get_settings()))
    except Exception:  # noqa: BLE001 - the batch is committed; the sweeper publishes too
        log.warning("could not publish the partition's backlog", exc_info=True)


def _submit_payouts(batch: BatchResult) -> None:
    """Each hold this batch placed goes to the provider now (tasks/payouts.py); a lost
    message is harmless: the payout tick submits pending payouts it finds.

    Sent by name: tasks.payouts rings through this module, so importing it here would
    make the two modules import each other."""
    for job, outcome in batch.outcomes:
        if isinstance(outcome, Settled) and outcome.kind == "payout":
            try:
                get_celery().send_task(PAYOUT_SUBMIT_TASK, args=[outcome.result["payoutId"]])
            except Exception:  # noqa: BLE001 - the beat tick submits it later
                log.warning("could not enqueue a payout submission", extra={"jobId": job["_id"]},
                            exc_info=True)


@task(name="ledger.settle", bind=True, acks_late=True, max_retries=None)
def settle(self, partition: int) -> dict[str, int]:  # type: ignore[no-untyped-def]
    settings = get_settings()
    if not isinstance(partition, int) or not 0 <= partition < settings.ledger_partitions:
        log.error("settle called with an invalid partition", extra={"partition": partition})
        return {"settled": 0, "failed": 0}
    with context.bound(partition=partition):
        _clear_flag(partition)
        db = get_db()
        try:
            drained = settle_partition(db, partition, partitions=settings.ledger_partitions,
                                       batch_max=settings.settle_batch_max,
                                       on_batch=functools.partial(_record, db, partition),
                                       time_budget=settings.settle_slice_seconds,
                                       transient=(SoftTimeLimitExceeded,))
        except SoftTimeLimitExceeded:
            # The worker's limit, not a job's fault: nothing of the open batch was committed.
            # Hand the partition to a fresh task; never fail a job for being slow.
            log.warning("settle reached the soft time limit; ringing again")
            force_ring(partition, None)
            return {"settled": 0, "failed": 0}
        except PyMongoError as exc:
            log.warning("store unavailable while settling; retrying", extra={"error": str(exc)})
            raise self.retry(countdown=min(2 ** min(self.request.retries, 5), 30), exc=exc) from exc
        except Exception:
            # Contention that outlasted its retries, or a bug: the task fails visibly (Flower,
            # Sentry), and the partition is handed on at once rather than left to the sweeper.
            ring_safely(force_ring, partition, None)
            raise
        if drained.more:
            # The time slice is spent with jobs left: yield the process (the doorbells of
            # other partitions are ahead of this one in the worker's queue rotation) and
            # hand the partition on at once.
            ring_safely(force_ring, partition, None)
        return {"settled": drained.settled, "failed": drained.failed}


def force_ring(partition: int, request_id: str | None) -> None:
    """:func:`ring` past the flag: a :data:`~services.jobs.Ringer` for the sweeper and hand-overs."""
    ring(partition, request_id, force=True)
