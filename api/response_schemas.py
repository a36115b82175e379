"""Response models: what the HTTP contract answers, and the problem+json error body."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schema_types import JobStatus, Role, SubscriptionStatus, WalletStatus
from ledger.decide import FAILURE_MESSAGES


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
