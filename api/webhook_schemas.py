"""Request and response models of the job webhook admin API (``api/routes/webhooks.py``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from api.request_schemas import PageQuery
from api.response_schemas import JobOut
from api.schema_types import Strict, one_of
from api.spec import webhook_event
from services.webhook_events import (
    EVENT_TYPES,
    JOB_EVENTS,
    MONEY_BACK_EVENTS,
    PAYOUT_EVENTS,
    DeliveryStatus,
    EndpointStatus,
)

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
WebhookStatus: Any = one_of(EndpointStatus)
WebhookDeliveryStatus: Any = one_of(DeliveryStatus)


class WebhookEndpointIn(Strict):
    url: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=2000)] = Field(
        description="http(s) URL of the receiver; private, loopback and link-local targets are refused "
                    "(WEBHOOK_URL_PRIVATE) and https is required, unless WEBHOOK_ALLOW_PRIVATE=true")
    eventTypes: Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES))]
    description: Annotated[str, StringConstraints(strict=True, max_length=200)] | None = None


class WebhookPageQuery(PageQuery):
    pass


class WebhookEndpointOut(BaseModel):
    webhookId: str
    url: str
    description: str | None
    eventTypes: list[str]
    status: WebhookStatus
    disabledReason: str | None
    activeSecrets: int
    createdAt: str
    updatedAt: str


class WebhookEndpointCreated(WebhookEndpointOut):
    secret: str = Field(description="whsec_<base64>: the signing secret, shown only in this answer")


class WebhookEndpointPage(BaseModel):
    items: list[WebhookEndpointOut]
    nextCursor: str | None


class WebhookAttemptOut(BaseModel):
    at: str
    attempt: int
    run: int
    statusCode: int | None
    error: str | None
    durationMs: int


class WebhookDeliveryOut(BaseModel):
    deliveryId: str
    eventId: str
    type: str
    jobId: str | None = Field(description="the job of a job, payout or money-back event; null for statement.ready")
    statementId: str | None = Field(description="<userId>:<YYYY-MM> for statement.ready; null otherwise")
    status: WebhookDeliveryStatus
    attempts: int = Field(description="attempts of the current run (a replay starts a new run)")
    run: int
    nextAttemptAt: str | None
    deliveredAt: str | None
    lastStatus: int | None
    lastError: str | None
    createdAt: str
    log: list[WebhookAttemptOut] = Field(description="the newest attempts first (at most 50 kept)")


class WebhookDeliveryPage(BaseModel):
    items: list[WebhookDeliveryOut]
    nextCursor: str | None


# --- what an endpoint receives (OpenAPI ``webhooks``) ------------------------------------


class JobEvent(BaseModel):
    """A job's event: ``data`` is the job as ``GET /api/jobs/{jobId}`` shows it when the event is made."""

    id: str = Field(description="evt_<jobId>, or evt_<jobId>_<family> for a payout/refund/chargeback event; "
                                "the webhook-id header")
    type: str
    timestamp: str = Field(description="when the job reached its terminal state")
    data: JobOut


class StatementLinks(BaseModel):
    statement: str = Field(description="GET with the creator's token: JSON, or CSV with Accept: text/csv")
    admin: str = Field(description="GET with an admin's token: the same statement")


class StatementReadyData(BaseModel):
    statementId: str = Field(description="<userId>:<YYYY-MM>")
    userId: str
    period: str = Field(description="YYYY-MM (UTC)")
    hash: str = Field(description="SHA-256 of the stored statement's head, recorded in the statements' audit chain")
    linesDigest: str | None
    openingBalance: int
    closingBalance: int
    net: int
    movements: int
    currency: str
    generatedAt: str | None
    links: StatementLinks


class StatementReadyEvent(BaseModel):
    """A closed month's statement was stored (once: by beat, or by the first request for it)."""

    id: str = Field(description="evt_statement_<userId>_<YYYY-MM>; the webhook-id header")
    type: Literal["statement.ready"]
    timestamp: str = Field(description="when the statement was stored")
    data: StatementReadyData


_JOB_EVENT_TEXT = {"job.settled": "A job settled", "job.failed": "A job failed",
                   "payout.pending": "A payout request settled: the amount is held",
                   "refund.settled": "A refund moved money back",
                   "chargeback.settled": "A provider chargeback moved money back"}
for _event in JOB_EVENTS + PAYOUT_EVENTS + MONEY_BACK_EVENTS:
    webhook_event(_event, _JOB_EVENT_TEXT.get(_event, f"The provider's word on a payout: {_event}"), JobEvent)
webhook_event("statement.ready", "A closed month's statement of a creator was stored", StatementReadyEvent)
