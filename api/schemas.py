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
from ledger.decide import FAILURE_MESSAGES
from ledger.money import MAX_AMOUNT

Id = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{24}$", strict=True)]
STRICT_INTEGER = ("A JSON integer: `1.0`, `\"1\"` and `true` are refused with 422 VALIDATION_FAILED, although "
                  "JSON Schema counts `1.0` as an integer.")
Amount = Annotated[int, Field(strict=True, ge=1, le=MAX_AMOUNT,
                              description=f"Coins (integer minor units), 1 to {MAX_AMOUNT}. {STRICT_INTEGER}")]
# ``\s`` differs between the engines that read this pattern (Python's and Rust's include
# U+0085, ECMA-262's, which OpenAPI clients use, includes U+FEFF instead): both are named.
# Surrounding white space is stripped (Rust's ``trim``, pydantic-core) before the pattern,
# so the documented pattern allows exactly those characters around the address.
_NOT_IN_EMAIL = r"[^@\s\x00-\x1f\x85\ufeff]"
_TRIMMED = r"[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*"
Email = Annotated[str, StringConstraints(strict=True, min_length=3, max_length=254, strip_whitespace=True,
                                         pattern=rf"^{_TRIMMED}{_NOT_IN_EMAIL}+@{_NOT_IN_EMAIL}+\.{_NOT_IN_EMAIL}+"
                                                 rf"{_TRIMMED}$")]
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
    asOf: str | None = Field(default=None, description="With `?asOf=`: the instant answered. `balance` is then "
                                                         "the ledger balance at that instant (credits settled by "
                                                         "other partitions count from their own date), "
                                                         "`incoming` is 0")
    debt: int | None = Field(default=None, description="With `?asOf=`: what a chargeback left owing (a "
                                                       "negative balance, as a positive number)")


class BalanceQuery(Strict):
    model_config = ConfigDict(extra="forbid", strict=False)
    asOf: Annotated[str, StringConstraints(max_length=40)] | None = Field(
        default=None, description="An RFC 3339 date-time with offset, e.g. `2026-11-30T23:59:59.999Z` "
                                  "(milliseconds kept). Malformed: 422 INSTANT_INVALID; later than now: "
                                  "INSTANT_IN_FUTURE; before the wallet existed: INSTANT_BEFORE_WALLET.")


class StatementSection(BaseModel):
    model_config = ConfigDict(extra="allow")
    count: int = 0
    amount: int = 0


class StatementLine(BaseModel):
    at: str
    jobId: str
    section: str = Field(description="income, spending, refunds, chargebacks, payouts.requested, "
                                     "payouts.released, payouts.returned")
    kind: str = Field(description="The operation: unlock, subscribe, renew, gift, transfer, topup, credit, "
                                  "refund, chargeback, payout, payout_event")
    amount: int = Field(description="What the line moved on this wallet (signed)")
    gross: int | None = Field(description="What the fan paid (revenue kinds), or the amount given back (refunds)")
    creatorShare: int | None
    platformRevenue: int | None
    processing: int | None
    counterpartyId: str | None
    originalJobId: str | None = Field(description="Refunds and chargebacks: the job they reverse")


class TieOut(BaseModel):
    opening: int
    net: int
    closing: int
    ok: bool = Field(description="opening + net == closing, exactly")


class StatementOut(BaseModel):
    userId: str
    walletId: str
    period: str
    currency: Literal["COIN"]
    provisional: bool = Field(description="The current month (or one not closed yet): computed now, will change")
    from_: str = Field(alias="from")
    to: str
    openingBalance: int
    closingBalance: int
    net: int
    movements: int
    income: dict[str, StatementSection]
    spending: dict[str, StatementSection]
    refunds: StatementSection
    chargebacks: StatementSection
    payouts: dict[str, StatementSection]
    tieOut: TieOut
    lines: list[StatementLine]
    hash: str | None = Field(default=None, description="Stored (closed) statements: the hash in the audit chain")
    linesDigest: str | None = None
    generatedAt: str | None = None


class StatementListItem(BaseModel):
    period: str
    stored: bool
    hash: str | None
    closingBalance: int | None


class StatementList(BaseModel):
    items: list[StatementListItem]


class PlatformReportOut(BaseModel):
    period: str
    provisional: bool
    kinds: dict[str, dict[str, int]] = Field(description="Per operation kind: count, gross, users (what user "
                                                          "wallets moved), revenue, processing, inFlight, funding")
    platform: dict[str, TieOut] = Field(description="Per system wallet: opening + the month's movements = closing")
    tieOut: TieOut = Field(description="Every system wallet and all users together: always sums to zero")


class ScheduleIn(Strict):
    interval: Literal["daily", "weekly", "monthly"]
    anchor: Annotated[str, StringConstraints(max_length=16)] | Annotated[int, Field(strict=True)] | None = Field(
        default=None, description="weekly: a weekday (`monday`); monthly: a day 1-28; daily: none")
    minimum: Amount


class ScheduleRun(BaseModel):
    slot: str
    outcome: Literal["placed", "skipped"]
    reason: str | None
    payoutId: str | None
    amount: int | None


class ScheduleOut(BaseModel):
    userId: str
    interval: Literal["daily", "weekly", "monthly"]
    anchor: str | int | None
    minimum: int
    nextSlot: str
    active: bool
    lastRun: dict[str, Any] | None
    runs: list[ScheduleRun] = []


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


# A job that fails is still a 200 on GET /api/jobs/<id>: its refusal is ``error.code``.
JobFailureCode = Literal[tuple(FAILURE_MESSAGES)]  # type: ignore[valid-type]


class JobError(BaseModel):
    code: JobFailureCode = Field(description="Why the job failed (stable):" + "".join(
        f"\n- `{code}`: {message}" for code, message in FAILURE_MESSAGES.items()))
    message: str


class RefundItem(BaseModel):
    """One refund (or, for a top-up, chargeback) settled against a job."""

    jobId: str
    type: Literal["refund", "chargeback"]
    amount: int  # gross, taken back from the original's legs
    reason: str | None
    createdAt: str


class JobOut(BaseModel):
    jobId: str = Field(description="GET /api/jobs/{jobId} follows it (a payout's id too)")
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


class SystemWalletOut(BaseModel):
    walletId: str = Field(description="A system wallet: the sum of its per-partition buckets")
    balance: int


class SystemWalletsOut(BaseModel):
    items: list[SystemWalletOut]
    currency: Literal["COIN"]


class WalletStatusOut(BaseModel):
    userId: str
    walletId: str
    status: WalletStatus


class HealthOut(BaseModel):
    status: str
    version: str


class FieldError(BaseModel):
    field: str
    message: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details; ``code`` is stable (each answer lists the codes it can carry)."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    requestId: str | None
    errors: list[FieldError] | None = Field(default=None, description="VALIDATION_FAILED: one entry per field")


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
