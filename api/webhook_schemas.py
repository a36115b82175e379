"""Request and response models of the job webhook admin API (``api/routes/webhooks.py``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from api.request_schemas import PageQuery
from api.schema_types import Strict, one_of
from services.webhook_events import EVENT_TYPES, DeliveryStatus, EndpointStatus

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
    jobId: str
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
