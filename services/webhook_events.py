"""Job webhooks' vocabulary: the event types, their ids, the envelope every endpoint gets,
and the states of endpoints and deliveries.

Settlement writes nothing for webhooks. Every batch already commits ONE audit block
(``auditlogs``: ``{partition, seq, jobs: [{jobId, type, outcome, ...}]}``) in the same
transaction as its job outcomes, so the block *is* the outbox record of the batch's
events: an event exists exactly when its job's outcome was committed. The rest lives
in ``services/webhook_endpoints.py`` (who subscribes), ``services/webhook_dispatch.py``
(audit blocks -> events and deliveries), ``services/webhook_delivery.py`` (one attempt)
and ``services/webhook_log.py`` (the delivery log and replay).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from enum import StrEnum
from typing import Any

from ledger.operations import OPERATION_TYPES
from ledger.states import JobStatus, PayoutStatus
from ledger.timeutil import iso


class EndpointStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"  # by an admin (DELETE) or by the receiver (410 Gone); never delivered to again


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # an attempt is due at nextAttemptAt (or leased by a worker until then)
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # the schedule is spent, the receiver answered 410, or the endpoint was disabled


JOB_EVENTS = ("job.settled", "job.failed")
PAYOUT_EVENTS = tuple(f"payout.{s.value}" for s in PayoutStatus if s is not PayoutStatus.SUBMITTED)
MONEY_BACK_EVENTS = ("refund.settled", "chargeback.settled")
STATEMENT_EVENTS = ("statement.ready",)
EVENT_TYPES: tuple[str, ...] = JOB_EVENTS + PAYOUT_EVENTS + MONEY_BACK_EVENTS + STATEMENT_EVENTS


def event_types_of(record: dict[str, Any], job: dict[str, Any] | None) -> list[str]:
    """The events one audit record gives: ``job.<outcome>`` and, for money out and back, a specific one."""
    outcome = record.get("outcome")
    if outcome == JobStatus.SETTLED:
        types = ["job.settled"]
    elif outcome == JobStatus.FAILED:
        return ["job.failed"]
    else:
        return []
    # The operation class declares its own events; of several, its result's status names one.
    cls = OPERATION_TYPES.get(record.get("type") or "")
    events = cls.events if cls is not None else ()
    if len(events) == 1:
        types.append(events[0])
    elif events:
        status = ((job or {}).get("result") or {}).get("status")
        types += [event for event in events if event == f"{event.split('.', 1)[0]}.{status}"]
    return types


def event_id(job_id: str, event_type: str) -> str:
    """``evt_<jobId>`` for the job event; the specific event of the same job gets its family."""
    family = event_type.split(".", 1)[0]
    return f"evt_{job_id}" if family == "job" else f"evt_{job_id}_{family}"


def delivery_id(evt_id: str, endpoint_id: str) -> str:
    """A 24-hex id derived from the event and the endpoint: a re-run inserts nothing new."""
    return hashlib.sha256(f"{evt_id}:{endpoint_id}".encode()).hexdigest()[:24]


def event_body(evt_id: str, event_type: str, occurred: datetime, data: dict[str, Any]) -> str:
    """The envelope every endpoint receives, byte for byte on every attempt; ``data`` is the
    job's :func:`~services.job_views.job_detail`, as ``GET /api/jobs/<id>`` shows it now."""
    envelope = {"id": evt_id, "type": event_type, "timestamp": iso(occurred), "data": data}
    return json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)

