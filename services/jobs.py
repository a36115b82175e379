"""Accepting money jobs (the transactional outbox), reading and presenting them.

:func:`accept_job` is the one way a money request becomes a job, for the API, the
tests and the benchmark alike: insert the queued job (which claims its idempotency
key in the same write), ring its partition, and say what happened as an :class:`Acceptance`. Jobs the system
makes in bulk (renewals, seeds) go through its batch form, :func:`accept_jobs`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo.database import Database
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteConcernError, WriteError

from ledger.operations import Operation, partition_of, to_params
from ledger.states import TERMINAL_JOB_STATUSES, JobStatus
from ledger.timeutil import iso, utcnow
from services import idempotency

if TYPE_CHECKING:
    from services.group_commit import GroupCommit

log = logging.getLogger("purser.jobs")

QUEUED, SETTLED, FAILED = JobStatus.QUEUED, JobStatus.SETTLED, JobStatus.FAILED
DUPLICATE_KEY = 11000
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
    job_id = job_id or new_job_id()
    if op.job_id_field is not None:
        op = replace(op, **{op.job_id_field: job_id})
    # No ``settledAt`` until settled: a present null is a key of the sparse ledger index
    # ``parties_settled`` (services/journal.py), so an accepted job would cost an index
    # entry it never needs; readers take ``job.get("settledAt")``.
    return {
        "_id": job_id,
        "type": op.kind,
        "ownerId": owner_id,
        "params": to_params(op),
        "status": QUEUED,
        "partition": partition_of(op.wallet, partitions),
        "requestId": request_id,
        "idempotencyKey": idempotency_key,
        "createdAt": now or utcnow(),
        "result": None,
        "error": None,
        "attempts": 0,
    }


class Outcome(StrEnum):
    """What :func:`accept_job` did with a request."""

    ACCEPTED = "accepted"  # the job is stored (holding its key) and rung
    REPLAYED = "replayed"  # a job already holds the key: its 202 answer again
    MISMATCH = "mismatch"  # the key was used with another request body


@dataclass(frozen=True)
class StoredResponse:
    """The 202 answer of an accepted job, derived from the job and replayed byte for byte."""

    status: int
    body: str
    headers: dict[str, str]


@dataclass(frozen=True)
class KeyClaim:
    """How to claim an idempotency key: whose key it is and what the request was."""

    owner_id: str  # keys are scoped per owner (the provider's webhook has its own)
    fingerprint: str  # of route, method and body: the same key with another body is refused
    ttl_hours: int


@dataclass(frozen=True)
class Acceptance:
    outcome: Outcome
    response: StoredResponse | None = None  # ACCEPTED: the 202; REPLAYED: the first answer
    job: dict[str, Any] | None = None  # ACCEPTED: the stored job; REPLAYED: the job holding the key

    @property
    def replayed(self) -> bool:
        return self.outcome == Outcome.REPLAYED


def accepted_response(job: dict[str, Any]) -> StoredResponse:
    """The 202 answer for ``job`` as it was when accepted (queued, no outcome yet).

    Derived, not stored: a replay of a job that has settled since answers exactly the
    bytes of the first answer, because everything in it but the status and outcome is
    fixed at acceptance (id, type, createdAt, stored at millisecond precision).
    """
    as_accepted = {**job, "status": QUEUED, "settledAt": None, "result": None, "error": None}
    body = json.dumps(job_view(as_accepted), separators=(",", ":"))
    return StoredResponse(202, body, {"Location": f"/api/jobs/{job['_id']}"})


KEY_ATTEMPTS = 3  # an expired holder released, then a racing first request: still bounded


def accept_job(
    db: Database,
    op: Operation,
    owner_id: str,
    *,
    partitions: int,
    ring: Ringer,
    request_id: str | None = None,
    key: str | None = None,
    claim: KeyClaim | None = None,
    job_id: str | None = None,
    group: GroupCommit | None = None,
) -> Acceptance:
    """Store ``op`` as a queued job exactly once per idempotency key, then ring its partition.

    With ``key`` and ``claim`` the job itself claims the key (``services/idempotency.py``):
    ONE insert, refused by the unique key index when another job holds the key, which
    is then replayed (same fingerprint) or refused (MISMATCH); nothing is written then.
    Without ``claim`` the key is only recorded on the job.

    The job insert is the point of no return: once it succeeds the job will settle,
    because the sweeper re-rings partitions with old queued jobs, so a failed doorbell
    is logged and swallowed. Any other store error is raised; when its outcome is
    unknown the client retries with the same key, and the key index makes that retry
    replay the first job if it was stored (or makes a late first insert fail).

    With a ``group`` (``ACCEPT_LINGER_MS`` > 0) the insert joins this process's next
    group commit (:func:`insert_each`), which raises per job what the insert would have
    and rings; a group that is full leaves the job to its own insert.
    """
    job = build_job(op, owner_id, partitions, request_id, key, job_id)

    def insert() -> None:
        if group is None or not group.insert(job, ring, request_id):
            db.jobs.insert_one(job)
            ring_safely(ring, job["partition"], request_id, job["_id"])
    if key is not None and claim is not None:
        job[idempotency.FIELD] = idempotency.key_fields(claim.owner_id, key, claim.fingerprint, claim.ttl_hours,
                                                        job["createdAt"])
        for attempt in range(1, KEY_ATTEMPTS + 1):
            try:
                insert()
                break
            except DuplicateKeyError as exc:
                if not idempotency.is_key_conflict(exc) or attempt == KEY_ATTEMPTS:
                    raise
                held = idempotency.holder(db, claim.owner_id, key)
                if held is None or idempotency.release_if_expired(db, held):
                    continue  # the key expired meanwhile: this request is a first one
                if held[idempotency.FIELD]["fp"] != claim.fingerprint:
                    return Acceptance(Outcome.MISMATCH)
                return Acceptance(Outcome.REPLAYED, accepted_response(held), held)
    else:
        insert()
    return Acceptance(Outcome.ACCEPTED, accepted_response(job), job)


@dataclass(frozen=True)
class Intake:
    """One job of a batch made by the system (beat's renewals, seeds, the bench)."""

    op: Operation
    owner_id: str
    key: str | None = None  # recorded on the job; a deterministic ``job_id`` is what dedupes
    job_id: str | None = None


@dataclass(frozen=True)
class BatchAcceptance:
    stored: list[dict[str, Any]]  # the jobs this call inserted
    existing: int  # jobs whose id was already stored (an earlier run made them)


INTAKE_CHUNK = 500  # documents per insert_many: bounded requests whatever the batch


def accept_jobs(db: Database, intakes: list[Intake], *, partitions: int, ring: Ringer | None,
                request_id: str | None = None) -> BatchAcceptance:
    """The batch form of :func:`accept_job` for jobs the system makes: one unordered insert
    per chunk, then one doorbell per partition (``ring=None``: none, the caller rings).

    No idempotency claims: a batch that may run twice (two beats, a restarted tick) gives
    its jobs deterministic ids, and an id already stored counts as ``existing`` rather
    than failing the batch; any other write error is raised.
    """
    jobs = [build_job(i.op, i.owner_id, partitions, request_id, i.key, i.job_id) for i in intakes]
    stored: list[dict[str, Any]] = []
    existing = 0
    for start in range(0, len(jobs), INTAKE_CHUNK):
        chunk = jobs[start:start + INTAKE_CHUNK]
        try:
            db.jobs.insert_many(chunk, ordered=False)
            stored += chunk
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            taken = {e["index"] for e in errors}
            existing += len(taken)
            stored += [job for n, job in enumerate(chunk) if n not in taken]
    assert len(stored) + existing == len(jobs)
    if ring is not None:
        for partition in sorted({job["partition"] for job in jobs}):
            ring_safely(ring, partition, request_id)
    return BatchAcceptance(stored, existing)


def insert_each(db: Database, jobs: list[dict[str, Any]]) -> list[BaseException | None]:
    """Insert ``jobs`` in one unordered ``insert_many`` (a group commit at the door); per job,
    what its own ``insert_one`` would have raised, or None when it is stored.

    A write error fails its own job only (a key another job holds: ``DuplicateKeyError``,
    the replay path); a write concern error is every written job's unknown outcome; an
    error of the whole command (unreachable store, timeout) is every job's.
    """
    try:
        db.jobs.insert_many(jobs, ordered=False)
        return [None] * len(jobs)
    except BulkWriteError as exc:
        details = exc.details or {}
        by_index = {e["index"]: e for e in details.get("writeErrors", [])}
        concern = (details.get("writeConcernErrors") or [None])[-1]
        return [_write_error(by_index[n]) if n in by_index else _concern_error(concern) for n in range(len(jobs))]
    except Exception as exc:  # noqa: BLE001 - every job fails as its own insert would have
        return [_own(exc) for _ in jobs]


def _write_error(error: dict[str, Any]) -> WriteError:
    # pymongo's own mapping of a write error to insert_one's exception (helpers_shared).
    if error.get("code") == DUPLICATE_KEY:
        return DuplicateKeyError(error.get("errmsg"), DUPLICATE_KEY, error)
    return WriteError(error.get("errmsg"), error.get("code"), error)


def _concern_error(error: dict[str, Any] | None) -> WriteConcernError | None:
    # The job was written; its replication is in doubt: an unknown outcome, as for insert_one.
    return None if error is None else WriteConcernError(error.get("errmsg"), error.get("code"), error)


def _own(exc: Exception) -> Exception:
    """A copy of ``exc`` per job: one instance raised in many requests would collect all their tracebacks."""
    try:
        return copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot be copied is shared
        return exc


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
    """Store the job durably, then ring its partition; the stored job.

    :func:`accept_job` without a key claim (``idempotency_key`` is only recorded on
    the job), for callers that make their own ids: the settlement tests and the bench.
    """
    acceptance = accept_job(db, op, owner_id, partitions=partitions, ring=ring, request_id=request_id,
                            key=idempotency_key, job_id=job_id)
    assert acceptance.job is not None
    return acceptance.job


def get_job(db: Database, job_id: str) -> dict[str, Any] | None:
    """The job ``job_id`` (its owner decides who may see it), or None."""
    return db.jobs.find_one({"_id": job_id})


def jobs_by_ids(db: Database, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The jobs ``ids`` by id, in one ``$in`` query (callers keep ``ids`` short)."""
    return {doc["_id"]: doc for doc in db.jobs.find({"_id": {"$in": ids}})}


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
