"""Beat tasks that keep the system live and honest: sweep, reconcile, key expiry."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from pymongo.database import Database

from infra import metrics
from infra.backlog import limits as backlog_limits
from infra.config import Settings, get_settings
from infra.mongo import get_db
from infra.redis_client import get_redis
from ledger.timeutil import utcnow
from services import backlog as backlog_store
from services import idempotency
from services.check_runs import RECONCILE, record_run
from services.jobs import ring_safely
from services.reconcile import reconcile as run_reconcile
from tasks.settle import force_ring
from workers.celery_app import task

log = logging.getLogger("purser.maintenance")


def stale_partitions(db: Database, partitions: int, cutoff: datetime) -> list[int]:
    """Partitions holding a queued job or an unapplied credit older than ``cutoff``.

    At most two index probes per partition, whatever the history.
    """
    return [p for p in range(partitions)
            if db.jobs.find_one({"partition": p, "status": "queued", "createdAt": {"$lt": cutoff}}, {"_id": 1})
            or db.credits.find_one({"to": p, "applied": False, "createdAt": {"$lt": cutoff}}, {"_id": 1})]


def stranded_partition(db: Database, partitions: int) -> int | None:
    """A partition at or beyond ``partitions`` that still holds a queued job, if any.

    Jobs keep the partition they were hashed to; after ``LEDGER_PARTITIONS`` was
    lowered with jobs queued, no worker consumes those and the sweep never rings them.
    """
    # Hinted: a range on the index's first field plus an equality is answered with a
    # collection scan by some planners (SecantusDB's), every sweep.
    doc = db.jobs.find_one({"partition": {"$gte": partitions}, "status": "queued"}, {"partition": 1},
                           hint="partition_queue")
    return None if doc is None else doc["partition"]


@task(name="ledger.sweep", acks_late=True, ignore_result=True)
def sweep() -> list[int]:
    """Re-ring every partition holding a queued job older than a few seconds.

    This, not Redis redelivery, is what guarantees liveness: a lost doorbell, a
    Redis restart or a killed worker leaves jobs queued in MongoDB, and they are
    found here.
    """
    settings = get_settings()
    db = get_db()
    cutoff = utcnow() - timedelta(seconds=settings.sweep_age_seconds)
    partitions = stale_partitions(db, settings.ledger_partitions, cutoff)
    for partition in partitions:
        ring_safely(force_ring, partition, None)
    if partitions:
        log.info("sweeper re-rang partitions", extra={"partitions": partitions})
    stranded = stranded_partition(db, settings.ledger_partitions)
    if stranded is not None:
        # ERROR reaches Sentry: money accepted but unreachable until an operator acts.
        log.error("jobs queued on a partition beyond LEDGER_PARTITIONS; restore the old value to drain them",
                  extra={"partition": stranded, "ledgerPartitions": settings.ledger_partitions})
    publish_backlogs(db, settings)
    return partitions


def publish_backlogs(db: Database, settings: Settings) -> None:
    """Every partition's backlog, for the web's limit and the gauges (a partition nobody
    settles publishes nothing itself). Never raises: the sweep's real work is done."""
    try:
        silent_after = max(2.0 * settings.sweep_interval_seconds, settings.settle_slice_seconds)
        loads = backlog_store.publish_all(db, get_redis(), settings.ledger_partitions, silent_after)
        metrics.record_loads(loads, backlog_limits(settings))
    except Exception:  # noqa: BLE001
        log.warning("could not publish the partitions' backlog", exc_info=True)


@task(name="ledger.reconcile", acks_late=True, ignore_result=True)
def reconcile() -> dict:
    db = get_db()
    report = run_reconcile(db)
    try:
        record_run(db, RECONCILE, report.as_dict())  # the console's overview shows the last run
    except Exception:  # noqa: BLE001 - the check itself ran; its log line and metric still say how
        log.warning("could not record the reconcile run", exc_info=True)
    metrics.RECONCILE_DRIFT.set(report.drift_total + abs(report.total_balance))
    if report.ok:
        log.info("reconciliation ok", extra={"wallets": report.wallets})
    else:
        # ERROR level reaches Sentry through its logging integration.
        log.error("reconciliation found drift", extra={"report": report.as_dict()})
    return report.as_dict()


@task(name="idempotency.expire", acks_late=True, ignore_result=True)
def expire_keys() -> int:
    """Free the idempotency keys older than ``IDEMPOTENCY_TTL_HOURS``; the jobs stay.

    Jobs are kept for good, so a TTL index cannot do this: the key fields are removed
    instead, a bounded number per tick (``services.idempotency.expire_keys``); a backlog
    (beat was down) is worked off over the following ticks.
    """
    removed = idempotency.expire_keys(get_db())
    if removed:
        log.info("expired idempotency keys", extra={"keys": removed})
    return removed
