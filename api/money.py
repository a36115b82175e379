"""Accepting a money request: idempotency key, durable job, doorbell, 202.

Every money endpoint goes through :func:`accept`, so the rules of the HTTP
contract (key required and well-formed, replay byte for byte, 422 on reuse with
another body) live in one place. The data side (the one insert that stores the job
and claims its key) is :func:`services.jobs.accept_job`; this module keeps
only headers, problem answers and the doorbell it injects.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import Response, current_app, g, request
from pydantic import BaseModel

from api.app_settings import settings
from api.errors import ApiError
from infra import metrics
from ledger.operations import Operation, partition_of
from services import group_commit
from services.jobs import Acceptance, KeyClaim, Outcome, Ringer, StoredResponse, accept_job
from services.store import process_db

MAX_KEY_LENGTH = 255
RINGER_EXTENSION = "purser_ringer"
BACKLOG_GATE_EXTENSION = "purser_backlog_gate"


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        if not settings().idempotency_enabled:
            return None
        raise ApiError(400, "IDEMPOTENCY_KEY_REQUIRED", "Send an Idempotency-Key header with money requests.")
    if not key or len(key) > MAX_KEY_LENGTH or not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise ApiError(400, "IDEMPOTENCY_KEY_INVALID",
                       "Idempotency-Key must be 1-255 printable ASCII characters without spaces.")
    return key


def fingerprint(body: BaseModel | dict[str, Any]) -> str:
    data = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    canonical = json.dumps({"route": request.path, "method": request.method, "body": data},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def ringer() -> Ringer:
    """The doorbell of this app: ``app.extensions["purser_ringer"]`` when set (tests), else Celery's."""
    injected = current_app.extensions.get(RINGER_EXTENSION)
    if injected is not None:
        return injected
    # The Celery adapter, imported at the first money request: the web tier starts
    # (and answers health checks) without loading the worker's modules.
    from tasks.settle import ring

    return ring


def _respond(stored: StoredResponse, replayed: bool = False) -> Response:
    response = Response(stored.body, status=stored.status, mimetype="application/json")
    for name, value in stored.headers.items():
        response.headers[name] = value
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def refuse_if_backlogged(op: Operation, partitions: int) -> None:
    """503 BACKLOG_FULL when the partition that would settle ``op`` is over its backlog limit.

    Before the job is stored: a refused request leaves no job and no key, so the
    client's retry with the same key is a first attempt. Admins are exempt (an operator
    must be able to refund or credit during an overload). No store read: the gate reads
    what the settlers publish (``infra/backlog.py``).
    """
    principal = g.get("principal", None)
    if principal is not None and principal.is_admin:
        return
    gate = current_app.extensions[BACKLOG_GATE_EXTENSION]
    shed = gate.check(partition_of(op.wallet, partitions))
    if shed is None:
        return
    metrics.record_shed(shed.partition)
    raise ApiError(503, "BACKLOG_FULL",
                   f"Settlement is behind ({shed.queued} jobs waiting where {shed.limit} settle within the "
                   "backlog limit); nothing was stored. Retry after the delay, with the same Idempotency-Key.",
                   headers={"Retry-After": str(shed.retry_after)})


def accept(op: Operation, body: BaseModel | dict[str, Any], *, owner_id: str,
           key: str | None = None, key_owner: str | None = None, job_id: str | None = None) -> Response:
    """Store ``op`` as a queued job exactly once per idempotency key and answer 202.

    ``key`` is the caller's ``Idempotency-Key`` (validated by the endpoint wrapper of
    ``api/spec.py`` and handed to the view), scoped to ``key_owner`` (default ``owner_id``);
    the payment webhook passes the provider's transaction id instead.
    ``job_id`` is for operations that name their own job (a payout's id is its job's).
    The rules live in :func:`services.jobs.accept_job`; this maps its outcome to HTTP.
    """
    result = admit(op, body, owner_id=owner_id, key=key, key_owner=key_owner, job_id=job_id)
    assert result.response is not None
    return _respond(result.response, replayed=result.replayed)


def admit(op: Operation, body: BaseModel | dict[str, Any], *, owner_id: str,
          key: str | None = None, key_owner: str | None = None, job_id: str | None = None) -> Acceptance:
    """:func:`accept` without the HTTP answer (the console redirects to the job instead):
    the acceptance, accepted or replayed; a key reused with another body is the API's 422."""
    s = settings()
    refuse_if_backlogged(op, s.ledger_partitions)
    claim = None
    if key is not None and s.idempotency_enabled:
        claim = KeyClaim(key_owner or owner_id, fingerprint(body), s.idempotency_ttl_hours)
    db = process_db()
    group = (group_commit.for_process(db, linger_ms=s.accept_linger_ms, max_batch=s.accept_batch_max)
             if s.accept_linger_ms > 0 else None)
    result = accept_job(db, op, owner_id, partitions=s.ledger_partitions, ring=ringer(),
                        request_id=g.request_id, key=key, claim=claim, job_id=job_id, group=group)
    if result.outcome == Outcome.MISMATCH:
        raise ApiError(422, "IDEMPOTENCY_KEY_REUSED",
                       "This Idempotency-Key was used with a different request body.")
    if result.outcome == Outcome.ACCEPTED:
        g.accepted_job = result.job
    return result
