"""Request models: the bodies and query strings the HTTP contract accepts, validated strictly.

``extra="forbid"`` refuses unknown fields; the field types (``api/schema_types.py``)
refuse loose JSON types. :data:`OPERATION_REQUESTS` names the body that asks for
each operation kind.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.schema_types import STRICT_INTEGER, Amount, Email, Id, JobStatus, Role, Strict, Text


class RegisterIn(Strict):
    email: Email
    password: Annotated[str, StringConstraints(strict=True, min_length=8, max_length=256)]
    displayName: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=80)] | None = None


class LoginIn(Strict):
    email: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=254)]
    password: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)]


class RoleIn(Strict):
    role: Role


class TransferIn(Strict):
    receiverId: Id
    amount: Amount
    note: Text | None = None


class ContentIn(Strict):
    title: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]
    price: Amount


class UnlockIn(Strict):
    contentId: Id


class PlanIn(Strict):
    price: Amount
    periodDays: Annotated[int, Field(strict=True, ge=1, le=366, description=f"Days per period. {STRICT_INTEGER}")]


class SubscribeIn(Strict):
    creatorId: Id
    autoRenew: bool = True


class CancelIn(Strict):
    subscriptionId: Id


class GiftIn(Strict):
    creatorId: Id
    amount: Amount
    message: Text | None = None


class WebhookIn(Strict):
    providerTxId: Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
    userId: Id
    amount: Amount


class CreditIn(Strict):
    userId: Id
    amount: Amount
    reason: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=500)]


class PayoutIn(Strict):
    amount: Amount


class RefundIn(Strict):
    jobId: Id
    amount: Amount | None = None  # None: whatever is left to refund of the original
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"]


ProviderEventId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


class ProviderEventIn(Strict):
    """A typed provider event (signed like top-ups); applied once per ``id``."""

    id: ProviderEventId
    type: Literal["payout.paid", "payout.failed", "payout.returned", "topup.disputed"]
    data: dict[str, Any]


class PayoutEventData(Strict):
    payoutId: Id


class DisputeData(Strict):
    providerTxId: ProviderEventId
    userId: Id
    amount: Amount


# What services/queries.encode_cursor writes: unpadded base64url of "<epoch ms>:<24-hex id>"
# (1 to 15 digits: 26 to 40 bytes, 35 to 54 characters).
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{35,54}$"


class PageQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False)
    limit: Annotated[int, Field(ge=1, le=100, description="Items per page")] = 20
    cursor: Annotated[str, StringConstraints(min_length=35, max_length=54, pattern=CURSOR_PATTERN)] | None = Field(
        default=None, description="Opaque: the `nextCursor` of the previous page, sent back unchanged (unpadded "
                                  "base64url, 35 to 54 characters). A string this API did not issue is refused "
                                  "with 422 VALIDATION_FAILED.")


class JobsQuery(PageQuery):
    status: JobStatus | None = None


class BalanceQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False)
    asOf: Annotated[str, StringConstraints(max_length=40)] | None = Field(
        default=None, description="An RFC 3339 date-time with offset, e.g. `2026-11-30T23:59:59.999Z` "
                                  "(milliseconds kept). Malformed: 422 INSTANT_INVALID; later than now: "
                                  "INSTANT_IN_FUTURE; before the wallet existed: INSTANT_BEFORE_WALLET.")


class ScheduleIn(Strict):
    interval: Literal["daily", "weekly", "monthly"]
    anchor: Annotated[str, StringConstraints(max_length=16)] | Annotated[int, Field(strict=True)] | None = Field(
        default=None, description="weekly: a weekday (`monday`); monthly: a day 1-28; daily: none")
    minimum: Amount


# The request body that asks for each operation kind (None: never requested over HTTP,
# e.g. renewals, which the subscription tick issues). tests/unit/test_operation_registry.py
# fails when a kind in ledger.operations.OPERATION_TYPES is missing here.
OPERATION_REQUESTS: dict[str, type[BaseModel] | None] = {
    "payout": PayoutIn,
    "payout_event": ProviderEventIn,  # payout.paid / payout.failed / payout.returned; expiry: beat
    "refund": RefundIn,
    "chargeback": ProviderEventIn,  # topup.disputed
    "transfer": TransferIn,
    "unlock": UnlockIn,
    "subscribe": SubscribeIn,
    "renew": None,
    "gift": GiftIn,
    "topup": WebhookIn,
    "credit": CreditIn,
}
