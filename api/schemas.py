"""Request and response models: the HTTP contract, validated strictly.

``extra="forbid"`` refuses unknown fields; strict types refuse ``true``, ``1.5``,
``"10"`` where an integer is expected; ids have a fixed shape so an object such as
``{"$ne": null}`` can never reach a MongoDB filter.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ledger import states
from ledger.money import MAX_AMOUNT

Id = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{24}$", strict=True)]
Amount = Annotated[int, Field(strict=True, gt=0, le=MAX_AMOUNT)]
Email = Annotated[str, StringConstraints(strict=True, min_length=3, max_length=254, strip_whitespace=True,
                                         pattern=r"^[^@\s\x00-\x1f]+@[^@\s\x00-\x1f]+\.[^@\s\x00-\x1f]+$")]
Text = Annotated[str, StringConstraints(strict=True, max_length=500)]


def one_of(states_enum: type[StrEnum]) -> Any:
    """``Literal`` of the enum's values: strict validation of plain JSON strings, an ``enum``
    in the OpenAPI document, and one source of truth (``ledger/states.py``)."""
    return Literal[tuple(member.value for member in states_enum)]


Role = one_of(states.Role)
JobStatus = one_of(states.JobStatus)
WalletStatus = one_of(states.WalletStatus)
SubscriptionStatus = one_of(states.SubscriptionStatus)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


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
    periodDays: Annotated[int, Field(strict=True, ge=1, le=366)]


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


class PageQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False)
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    cursor: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,200}$")] | None = None


class JobsQuery(PageQuery):
    status: JobStatus | None = None


# ---- responses ---------------------------------------------------------------

class UserOut(BaseModel):
    userId: str
    email: str
    role: Role


class MeOut(UserOut):
    walletId: str
    displayName: str | None = None


class TokenOut(BaseModel):
    accessToken: str
    tokenType: Literal["Bearer"]
    expiresIn: int


class BalanceOut(BaseModel):
    walletId: str
    userId: str
    balance: int = Field(description="Spendable now")
    incoming: int = Field(description="Settled for this wallet by another partition, not yet applied: "
                                      "spendable within about a second")
    held: int = Field(description="Held by open payouts (pending or submitted): not spendable; "
                                  "returned to the balance if the payout fails or expires")
    currency: Literal["COIN"]
    status: WalletStatus


class TxItem(BaseModel):
    txId: str
    jobId: str
    type: str
    amount: int
    counterpartyId: str | None
    createdAt: str


class TxPage(BaseModel):
    items: list[TxItem]
    nextCursor: str | None


class PayoutEventOut(BaseModel):
    eventId: str | None
    status: str | None
    jobId: str | None
    at: str | None


class PayoutOut(BaseModel):
    payoutId: str = Field(description="Also the id of the payout job that placed the hold")
    userId: str
    amount: int
    status: Literal["pending", "submitted", "paid", "failed", "expired", "returned"]
    jobId: str | None
    createdAt: str
    updatedAt: str
    events: list[PayoutEventOut]


class PayoutPage(BaseModel):
    items: list[PayoutOut]
    nextCursor: str | None


class JobError(BaseModel):
    code: str
    message: str


class RefundItem(BaseModel):
    """One refund (or, for a top-up, chargeback) settled against a job."""

    jobId: str
    type: Literal["refund", "chargeback"]
    amount: int  # gross, taken back from the original's legs
    reason: str | None
    createdAt: str


class JobOut(BaseModel):
    jobId: str
    type: str
    status: JobStatus
    createdAt: str
    settledAt: str | None
    result: dict[str, Any] | None
    error: JobError | None
    # GET /api/jobs/<id> of a settled unlock, gift, subscription charge, transfer or top-up:
    # what was given back so far (read on the refund_of index), oldest first.
    refunds: list[RefundItem] | None = None
    refunded: int | None = None


class JobPage(BaseModel):
    items: list[JobOut]
    nextCursor: str | None


class ContentOut(BaseModel):
    contentId: str
    creatorId: str
    title: str
    price: int
    unlocked: bool | None = None


class PlanOut(BaseModel):
    creatorId: str
    price: int
    periodDays: int
    isActive: bool


class SubscriptionOut(BaseModel):
    subscriptionId: str
    creatorId: str
    subscriberId: str
    status: SubscriptionStatus
    expiresAt: str
    autoRenew: bool
    price: int
    periodDays: int
    renewals: int


class SubscriptionPage(BaseModel):
    items: list[SubscriptionOut]


class WalletStatusOut(BaseModel):
    userId: str
    walletId: str
    status: WalletStatus


class HealthOut(BaseModel):
    status: str
    version: str


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    code: str
    requestId: str | None


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
