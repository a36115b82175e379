"""Accepting money jobs (the transactional outbox) and presenting them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.database import Database

from ledger.operations import Operation, partition_of, to_params
from ledger.states import TERMINAL_JOB_STATUSES, JobStatus
from ledger.timeutil import iso, utcnow

log = logging.getLogger("purser.jobs")

QUEUED, SETTLED, FAILED = JobStatus.QUEUED, JobStatus.SETTLED, JobStatus.FAILED
TERMINAL = TERMINAL_JOB_STATUSES

# ring(partition, request_id) publishes a doorbell; provided by the task layer.
Ringer = Callable[[int, str | None], None]


def new_job_id() -> str:
    return str(ObjectId())


def build_job(
    op: Operation,
    owner_id: str,
    partitions: int,
    request_id: str | None,
    idempotency_key: str | None,
    job_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    return {
        "_id": job_id or new_job_id(),
        "type": op.kind,
        "ownerId": owner_id,
        "params": to_params(op),
        "status": QUEUED,
        "partition": partition_of(op.wallet, partitions),
        "requestId": request_id,
        "idempotencyKey": idempotency_key,
        "createdAt": now or utcnow(),
        "settledAt": None,
        "result": None,
        "error": None,
        "attempts": 0,
    }


def submit(
    db: Database,
    op: Operation,
    owner_id: str,
    *,
    partitions: int,
    ring: Ringer,
    request_id: str | None = None,
    idempotency_key: str | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """Store the job durably, then ring its partition.

    The insert is the point of no return: once it succeeds the job will settle,
    because the sweeper re-rings partitions with old queued jobs. A failed publish
    is therefore logged and swallowed, never reported to the client.
    """
    job = build_job(op, owner_id, partitions, request_id, idempotency_key, job_id)
    db.jobs.insert_one(job)
    ring_safely(ring, job["partition"], request_id, job["_id"])
    return job


def ring_safely(ring: Ringer, partition: int, request_id: str | None, job_id: str | None = None) -> bool:
    try:
        ring(partition, request_id)
        return True
    except Exception:  # noqa: BLE001 - any broker failure is recoverable by the sweeper
        log.warning("doorbell publish failed; the sweeper will ring again",
                    extra={"partition": partition, "jobId": job_id}, exc_info=True)
        return False


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """The public JSON body of a job (HTTP contract)."""
    return {
        "jobId": job["_id"],
        "type": job["type"],
        "status": job["status"],
        "createdAt": iso(job["createdAt"]),
        "settledAt": iso(job["settledAt"]) if job.get("settledAt") else None,
        "result": _jsonable(job.get("result")),
        "error": job.get("error"),
    }
