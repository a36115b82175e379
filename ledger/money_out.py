"""Money out and money back: payouts (hold, post, void, return), refunds and chargebacks.

Every decision here is an ordinary settled job with its own ledger record whose
entries sum to zero; nothing edits a posted entry. The models are TigerBeetle's
pending transfers (a hold moves coins to an in-flight account; post sends them out,
void brings them back), Stripe's payouts (pending -> paid | failed, paid -> returned
as a new compensating credit) and proportional refunds with the platform's fee
reversed (Stripe's ``refund_application_fee``).
"""

from __future__ import annotations

from datetime import datetime

from ledger.effects import Effect, EndSubscription, HoldPayout, MovePayout, Reversal, RevokeUnlock
from ledger.money import EXTERNAL_FUNDING, PAYOUTS_IN_FLIGHT, PLATFORM_PROCESSING
from ledger.operations import REFUND_DEBTORS, Chargeback, Payout, PayoutEvent, Refund
from ledger.outcomes import (
    NOT_REFUNDABLE,
    ORIGINAL_NOT_FOUND,
    PAYOUT_NOT_FOUND,
    PAYOUT_STATE_CONFLICT,
    REFUND_EXCEEDS_ORIGINAL,
    TOPUP_NOT_FOUND,
    WALLET_NOT_FOUND,
    Entry,
    Original,
    Snapshot,
)
from ledger.rules import Decided, Refused, user_wallet
from ledger.splits import REFUND_PROCESSING_SHARE, allocate
from ledger.states import PayoutStatus

# Kinds an admin may refund: those whose class names a refund debtor (ledger/operations.py).
REFUNDABLE = tuple(REFUND_DEBTORS)

# (status now, event) -> (new status, how the coins move). Anything else moves nothing
# and fails the event job with PAYOUT_STATE_CONFLICT (recorded and audited).
POST, VOID, RETURN = "post", "void", "return"
PAYOUT_TRANSITIONS: dict[tuple[str, str], tuple[str, str]] = {
    (PayoutStatus.PENDING, "paid"): (PayoutStatus.PAID, POST),
    (PayoutStatus.SUBMITTED, "paid"): (PayoutStatus.PAID, POST),
    (PayoutStatus.PENDING, "failed"): (PayoutStatus.FAILED, VOID),
    (PayoutStatus.SUBMITTED, "failed"): (PayoutStatus.FAILED, VOID),
    # Only a hold the provider never received expires: a submitted payout may be paid.
    (PayoutStatus.PENDING, "expired"): (PayoutStatus.EXPIRED, VOID),
    (PayoutStatus.PAID, "returned"): (PayoutStatus.RETURNED, RETURN),
    # A failure reported after success is a return (the bank sent the money back).
    (PayoutStatus.PAID, "failed"): (PayoutStatus.RETURNED, RETURN),
}


def payout_moves(user: str, amount: int, move: str) -> list[Entry]:
    """The ledger entries of a payout's post, void or return (each sums to zero)."""
    if move == POST:
        return [Entry(PAYOUTS_IN_FLIGHT, -amount), Entry(EXTERNAL_FUNDING, amount)]
    if move == VOID:
        return [Entry(PAYOUTS_IN_FLIGHT, -amount), Entry(user, amount)]
    if move == RETURN:
        return [Entry(EXTERNAL_FUNDING, -amount), Entry(user, amount)]
    raise ValueError(f"unknown payout move {move!r}")


def decide_payout(job_id: str, op: Payout, state: Snapshot, now: datetime) -> Decided:
    user_wallet(state, op.user, WALLET_NOT_FOUND)
    entries = [Entry(op.user, -op.amount), Entry(PAYOUTS_IN_FLIGHT, op.amount)]
    result = {"amount": op.amount, "payoutId": op.payout_id, "status": PayoutStatus.PENDING.value}
    return entries, result, [HoldPayout(op.payout_id, op.user, op.amount)]


def decide_payout_event(job_id: str, op: PayoutEvent, state: Snapshot, now: datetime) -> Decided:
    payout = state.payouts.get(op.payout_id)
    if payout is None or payout.user_id != op.user:
        raise Refused(PAYOUT_NOT_FOUND)
    transition = PAYOUT_TRANSITIONS.get((payout.status, op.event))
    if transition is None:
        raise Refused(PAYOUT_STATE_CONFLICT)
    new_status, move = transition
    entries = payout_moves(op.user, payout.amount, move)
    result = {"amount": payout.amount, "payoutId": op.payout_id, "event": op.event,
              "from": str(payout.status), "status": new_status.value}
    return entries, result, [MovePayout(op.payout_id, payout.status, new_status, op.event_id)]


def refund_legs(original: Original, amount: int) -> dict[str, int]:
    """What each leg of ``original`` gives back for a refund of ``amount``.

    Shared in proportion to what each leg has left (largest remainder, the original's
    leg order breaking ties), so any sequence of partial refunds gives back exactly
    the original, leg by leg, and never more.
    """
    weights = [(wallet, leg - original.reversed.get(wallet, 0)) for wallet, leg in original.legs]
    return allocate(amount, weights)


def decide_refund(job_id: str, op: Refund, state: Snapshot, now: datetime) -> Decided:
    original = state.originals.get(op.original_job_id)
    if original is None:
        raise Refused(ORIGINAL_NOT_FOUND)
    if original.kind not in REFUNDABLE or not any(w == op.debtor for w, _ in original.legs):
        raise Refused(NOT_REFUNDABLE)
    remaining = original.remaining
    amount = remaining if op.amount is None else op.amount
    if amount <= 0 or amount > remaining:
        raise Refused(REFUND_EXCEEDS_ORIGINAL)
    legs = refund_legs(original, amount)
    kept = 0 if REFUND_PROCESSING_SHARE else legs.get(PLATFORM_PROCESSING, 0)
    entries = [Entry(wallet, -share) for wallet, share in legs.items()
               if share and not (kept and wallet == PLATFORM_PROCESSING)]
    entries.append(Entry(original.payer, amount - kept))
    effects: list[Effect] = [Reversal(op.original_job_id, tuple(legs.items()), op.reason)]
    full = amount == remaining
    if full and original.kind == "unlock":
        effects.append(RevokeUnlock(original.payer, original.result["contentId"]))
    if full and original.kind in ("subscribe", "renew") and original.result.get("subscriptionId"):
        sub = state.subscriptions.get(original.result["subscriptionId"])
        if sub is not None and sub.status == "active":
            effects.append(EndSubscription(sub.subscription_id, "refunded"))
    result = {"amount": amount, "originalJobId": op.original_job_id, "reason": op.reason,
              "refundedTo": original.payer, "refunded": amount - kept, "legs": legs,
              "remaining": remaining - amount}
    return entries, result, effects


def decide_chargeback(job_id: str, op: Chargeback, state: Snapshot, now: datetime) -> Decided:
    topup = state.topups.get(op.provider_tx_id)
    if topup is None or topup.legs[0][0] != op.user or op.user not in state.wallets:
        raise Refused(TOPUP_NOT_FOUND)
    if op.amount > topup.remaining:
        raise Refused(REFUND_EXCEEDS_ORIGINAL)
    # Always applies, frozen or not, covered or not: the card network already took the
    # money back. A negative balance is debt that later credits repay.
    entries = [Entry(op.user, -op.amount), Entry(EXTERNAL_FUNDING, op.amount)]
    result = {"amount": op.amount, "providerTxId": op.provider_tx_id, "originalJobId": topup.job_id,
              "remaining": topup.remaining - op.amount}
    return entries, result, [Reversal(topup.job_id, ((op.user, op.amount),), "chargeback")]
