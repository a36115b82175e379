"""Accepting a money request: idempotency key, durable job, doorbell, 202.

Every money endpoint goes through :func:`accept`, so the rules of the HTTP
contract (key required and well-formed, replay byte for byte, 409 while in
flight, 422 on reuse with another body) live in one place.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from flask import Response, current_app, g, request
from pydantic import BaseModel
from pymongo.errors import DuplicateKeyError

from api.errors import ApiError
from infra.mongo import get_db
from ledger.operations import Operation
from services import idempotency
from services.jobs import build_job, job_view, ring_safely

MAX_KEY_LENGTH = 255


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        if not current_app.config["PURSER"].idempotency_enabled:
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


def _job_response(job: dict[str, Any], status: int = 202) -> tuple[str, dict[str, str]]:
    body = json.dumps(job_view(job), separators=(",", ":"))
    return body, {"Location": f"/api/jobs/{job['_id']}"}


def _stored(body: str, headers: dict[str, str]) -> dict[str, Any]:
    return {"status": 202, "body": body, "headers": headers}


def _respond(status: int, body: str, headers: dict[str, str], replayed: bool = False) -> Response:
    response = Response(body, status=status, mimetype="application/json")
    for name, value in headers.items():
        response.headers[name] = value
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _replay(record: dict[str, Any]) -> Response:
    stored = record["response"]
    return _respond(stored["status"], stored["body"], stored["headers"], replayed=True)


def accept(op: Operation, body: BaseModel | dict[str, Any], *, owner_id: str,
           key: str | None = None, key_owner: str | None = None) -> Response:
    """Store ``op`` as a queued job exactly once per idempotency key and answer 202.

    ``key``/``key_owner`` default to the caller's ``Idempotency-Key`` scoped to
    ``owner_id``; the payment webhook passes the provider's transaction id instead.
    """
    from tasks.settle import ring  # the Celery adapter, imported lazily: web works without a worker

    settings = current_app.config["PURSER"]
    db = get_db()
    key = key if key is not None else g.get("idempotency_key", None)
    key_owner = key_owner or owner_id
    job = build_job(op, owner_id, settings.ledger_partitions, g.request_id, key)
    body_text, headers = _job_response(job)
    record = None
    if key is not None and settings.idempotency_enabled:
        claim = idempotency.claim(db, key_owner, key, fingerprint(body), job["_id"],
                                  settings.idempotency_ttl_hours, _stored(body_text, headers))
        if claim.state == idempotency.REPLAY:
            return _replay(claim.record)
        if claim.state == idempotency.MISMATCH:
            raise ApiError(422, "IDEMPOTENCY_KEY_REUSED",
                           "This Idempotency-Key was used with a different request body.")
        if claim.state == idempotency.IN_USE:
            raise ApiError(409, "IDEMPOTENCY_KEY_IN_USE",
                           "A request with this Idempotency-Key is still being processed; retry shortly.",
                           headers={"Retry-After": "1"})
        record = claim.record
        if record["jobId"] != job["_id"]:  # took over a crashed claim: keep its job id
            job = build_job(op, owner_id, settings.ledger_partitions, g.request_id, key, job_id=record["jobId"])
            body_text, headers = _job_response(job)
            idempotency.set_response(db, record, _stored(body_text, headers))

    try:
        db.jobs.insert_one(job)
    except DuplicateKeyError:
        # The crashed first attempt stored its job after all: answer with that one.
        job = db.jobs.find_one({"_id": job["_id"]}) or job
        body_text, headers = _job_response(job)
        if record is not None:
            idempotency.set_response(db, record, _stored(body_text, headers))
    except Exception as exc:
        # Outcome unknown (network error, timeout, write concern error): the server may
        # have applied the insert. Keep the claim, so a retry with this key replays that
        # job or, 30 s on, re-inserts the SAME job id; releasing it would let a retry
        # create a second job and charge twice. Known failures free the key.
        if record is not None and not idempotency.outcome_unknown(exc):
            idempotency.release(db, record)
        raise
    ring_safely(ring, job["partition"], g.request_id, job["_id"])
    g.accepted_job = job
    return _respond(202, body_text, headers)
