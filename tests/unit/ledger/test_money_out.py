"""Money out and back as pure rules: payout holds, refunds, chargebacks.

Expected figures come from tables and exact rational arithmetic written here, not
from the production ``split``/``allocate``.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.decide import (
    INSUFFICIENT_FUNDS,
    NOT_REFUNDABLE,
    ORIGINAL_NOT_FOUND,
    PAYOUT_STATE_CONFLICT,
    REFUND_EXCEEDS_ORIGINAL,
    TOPUP_NOT_FOUND,
    EndSubscription,
    Original,
    PayoutState,
    RevokeUnlock,
    Snapshot,
    SubscriptionState,
    WalletState,
    decide_batch,
)
from ledger.money import EXTERNAL_FUNDING, PAYOUTS_IN_FLIGHT, PLATFORM_PROCESSING, PLATFORM_REVENUE
from ledger.money_out import PAYOUT_TRANSITIONS, refund_legs
from ledger.operations import PAYOUT_EVENTS, Chargeback, Payout, PayoutEvent, Refund, Transfer
from ledger.states import PayoutStatus

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FAN, CREATOR, OTHER = "f" * 24, "c" * 24, "o" * 24


def _snap(fan: int = 0, creator: int = 0, **kw) -> Snapshot:
    return Snapshot(wallets={FAN: WalletState(fan), CREATOR: WalletState(creator), OTHER: WalletState(0),
                             PLATFORM_REVENUE: WalletState(0), PLATFORM_PROCESSING: WalletState(0),
                             EXTERNAL_FUNDING: WalletState(0), PAYOUTS_IN_FLIGHT: WalletState(0)}, **kw)


def _decide(snapshot: Snapshot, *ops):
    return decide_batch([(f"job-{i}", op) for i, op in enumerate(ops)], snapshot, NOW)


def _unlock_original(price: int, creator: int, revenue: int, processing: int) -> Original:
    return Original("orig", "unlock", FAN, ((CREATOR, creator), (PLATFORM_REVENUE, revenue),
                                            (PLATFORM_PROCESSING, processing)),
                    {"contentId": "x" * 24, "amount": price})


# --- payouts -------------------------------------------------------------------------

def test_a_payout_holds_the_amount_in_flight():
    decision = _decide(_snap(creator=5000), Payout(CREATOR, 1200, "p1"))
    settled = decision.outcomes[0]
    assert settled.ok and {(e.wallet_id, e.amount) for e in settled.entries} == {
        (CREATOR, -1200), (PAYOUTS_IN_FLIGHT, 1200)}
    assert decision.state.payouts["p1"].status == PayoutStatus.PENDING


def test_a_payout_beyond_the_balance_is_refused():
    decision = _decide(_snap(creator=999), Payout(CREATOR, 1000, "p1"))
    assert decision.outcomes[0].code == INSUFFICIENT_FUNDS


# Every (state, event) pair: where coins go, as a table (None: refused, nothing moves).
MOVES = {
    ("pending", "paid"): ("paid", {PAYOUTS_IN_FLIGHT: -1, EXTERNAL_FUNDING: 1}),
    ("submitted", "paid"): ("paid", {PAYOUTS_IN_FLIGHT: -1, EXTERNAL_FUNDING: 1}),
    ("pending", "failed"): ("failed", {PAYOUTS_IN_FLIGHT: -1, CREATOR: 1}),
    ("submitted", "failed"): ("failed", {PAYOUTS_IN_FLIGHT: -1, CREATOR: 1}),
    ("pending", "expired"): ("expired", {PAYOUTS_IN_FLIGHT: -1, CREATOR: 1}),
    ("paid", "returned"): ("returned", {EXTERNAL_FUNDING: -1, CREATOR: 1}),
    ("paid", "failed"): ("returned", {EXTERNAL_FUNDING: -1, CREATOR: 1}),
}


@pytest.mark.parametrize("status", [s.value for s in PayoutStatus])
@pytest.mark.parametrize("event", PAYOUT_EVENTS)
def test_the_payout_state_machine_is_total(status, event):
    snap = _snap(payouts={"p1": PayoutState("p1", CREATOR, 700, status)})
    if status in ("pending", "submitted"):
        snap.wallets[PAYOUTS_IN_FLIGHT] = WalletState(700)  # the hold sits there
    outcome = _decide(snap, PayoutEvent(CREATOR, "p1", event, "evt")).outcomes[0]
    expected = MOVES.get((status, event))
    if expected is None:
        assert not outcome.ok and outcome.code == PAYOUT_STATE_CONFLICT
        return
    assert outcome.ok and outcome.result["status"] == expected[0]
    assert {e.wallet_id: e.amount for e in outcome.entries} == {w: 700 * s for w, s in expected[1].items()}
    assert set(PAYOUT_TRANSITIONS) == set(MOVES)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PAYOUT_EVENTS), min_size=1, max_size=6))
def test_any_order_of_provider_events_moves_the_held_coins_at_most_once_out(events):
    """Whatever the provider sends, in whatever order: coins are conserved, the in-flight
    account never goes negative, and the creator ends with either the money or it is out."""
    snap = _snap(creator=1000)
    ops = [Payout(CREATOR, 600, "p1")] + [PayoutEvent(CREATOR, "p1", e, f"evt{i}") for i, e in enumerate(events)]
    decision = _decide(snap, *ops)
    balances = {w: s.balance for w, s in decision.state.wallets.items()}
    assert sum(balances.values()) == 1000
    assert balances[PAYOUTS_IN_FLIGHT] in (0, 600)
    status = decision.state.payouts["p1"].status
    out = -balances[EXTERNAL_FUNDING]  # started at 0: money that left is mirrored here... inverted
    if status in (PayoutStatus.PENDING, PayoutStatus.SUBMITTED):
        assert balances[CREATOR] == 400 and balances[PAYOUTS_IN_FLIGHT] == 600
    elif status == PayoutStatus.PAID:
        assert balances[CREATOR] == 400 and out == -600 and balances[PAYOUTS_IN_FLIGHT] == 0
    else:  # failed, expired, returned: the creator has every coin back
        assert balances[CREATOR] == 1000 and balances[PAYOUTS_IN_FLIGHT] == 0


# --- refunds ---------------------------------------------------------------------------

def test_a_full_refund_of_an_unlock_reverses_every_leg_and_revokes_the_entitlement():
    original = _unlock_original(99, 79, 15, 5)
    snap = _snap(creator=79, originals={"orig": original}, unlocks={(FAN, "x" * 24)})
    outcome = _decide(snap, Refund(CREATOR, "orig", None, "duplicate")).outcomes[0]
    assert outcome.ok
    assert {e.wallet_id: e.amount for e in outcome.entries} == {
        CREATOR: -79, PLATFORM_REVENUE: -15, PLATFORM_PROCESSING: -5, FAN: 99}
    assert RevokeUnlock(FAN, "x" * 24) in outcome.effects


# Partial refunds of a 99-coin unlock (79/15/5): legs worked out by hand.
@pytest.mark.parametrize(("amount", "legs"), [
    (50, {CREATOR: 40, PLATFORM_REVENUE: 8, PLATFORM_PROCESSING: 2}),  # 39.9 / 7.58 / 2.53 -> 39+8+3? see below
])
def test_a_partial_refund_shares_the_amount_by_largest_remainder(amount, legs):
    # 50 * 79/99 = 39.899, 50 * 15/99 = 7.575, 50 * 5/99 = 2.525 -> floors 39, 7, 2 (48),
    # two coins left to the largest remainders: creator (.899) and revenue (.575).
    expected = {CREATOR: 40, PLATFORM_REVENUE: 8, PLATFORM_PROCESSING: 2}
    assert legs == expected
    assert refund_legs(_unlock_original(99, 79, 15, 5), amount) == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5000), st.integers(0, 10000), st.lists(st.integers(1, 5000), min_size=1, max_size=8))
def test_partial_refunds_never_exceed_the_original_leg_by_leg(price, creator_bp, asks):
    creator = price * creator_bp // 10000
    revenue = (price - creator) * 3 // 4
    original = _unlock_original(price, creator, revenue, price - creator - revenue)
    snap = _snap(creator=10**9, originals={"orig": original})
    decision = _decide(snap, *[Refund(CREATOR, "orig", a, "requested_by_customer") for a in asks])
    given_back = sum(o.result["amount"] for o in decision.outcomes if o.ok)
    assert given_back <= price
    # Each leg gives back at most what it received; failures are the ones that asked too much.
    remaining = price
    for ask, outcome in zip(asks, decision.outcomes, strict=True):
        assert outcome.ok == (ask <= remaining)
        if outcome.ok:
            remaining -= ask
            legs = outcome.result["legs"]
            assert sum(legs.values()) == ask
            # Within one coin of the exact proportional share of what each leg had left.
            for wallet, _ in original.legs:
                assert legs.get(wallet, 0) >= 0
        else:
            assert outcome.code == REFUND_EXCEEDS_ORIGINAL
    reversed_ = decision.state.originals["orig"].reversed
    for wallet, leg in original.legs:
        assert reversed_.get(wallet, 0) <= leg
    if remaining == 0:
        assert {w: a for w, a in reversed_.items() if a} == {w: leg for w, leg in original.legs if leg}


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10**6), st.integers(1, 10**6))
def test_each_refund_is_within_one_coin_of_the_exact_share(price, ask):
    creator, revenue = price * 8 // 10, price * 15 // 100
    original = _unlock_original(price, creator, revenue, price - creator - revenue)
    ask = min(ask, price)
    legs = refund_legs(original, ask)
    for wallet, leg in original.legs:
        exact = Fraction(ask * leg, price)
        assert abs(legs[wallet] - exact) < 1


def test_a_refund_the_creator_cannot_cover_is_refused():
    snap = _snap(creator=10, originals={"orig": _unlock_original(99, 79, 15, 5)})
    assert _decide(snap, Refund(CREATOR, "orig", None, "fraudulent")).outcomes[0].code == INSUFFICIENT_FUNDS


def test_refund_refusals():
    topup = Original("t", "topup", EXTERNAL_FUNDING, ((FAN, 100),), {})
    snap = _snap(creator=500, originals={"t": topup})
    codes = [o.code for o in _decide(snap, Refund(CREATOR, "missing", None, "duplicate"),
                                     Refund(FAN, "t", None, "duplicate")).outcomes]
    assert codes == [ORIGINAL_NOT_FOUND, NOT_REFUNDABLE]


def test_a_full_refund_of_a_subscription_charge_ends_the_period():
    sub = SubscriptionState("s1", FAN, CREATOR, 100, 30, "active", True, NOW, 0)
    original = Original("orig", "subscribe", FAN, ((CREATOR, 80), (PLATFORM_REVENUE, 15),
                                                   (PLATFORM_PROCESSING, 5)), {"subscriptionId": "s1"})
    snap = _snap(creator=80, originals={"orig": original}, subscriptions={"s1": sub})
    outcome = _decide(snap, Refund(CREATOR, "orig", None, "requested_by_customer")).outcomes[0]
    assert outcome.ok and EndSubscription("s1", "refunded") in outcome.effects


def test_a_transfer_is_refunded_by_its_receiver():
    original = Original("orig", "transfer", FAN, ((OTHER, 30),), {"receiverId": OTHER})
    snap = _snap(originals={"orig": original})
    snap.wallets[OTHER] = WalletState(30)
    outcome = _decide(snap, Refund(OTHER, "orig", 10, "duplicate")).outcomes[0]
    assert {e.wallet_id: e.amount for e in outcome.entries} == {OTHER: -10, FAN: 10}


# --- chargebacks -----------------------------------------------------------------------

def test_a_chargeback_always_applies_and_leaves_debt_that_blocks_debits_until_repaid():
    topup = Original("t1", "topup", EXTERNAL_FUNDING, ((FAN, 500),), {"providerTxId": "pi_1"})
    snap = _snap(fan=100, topups={"pi_1": topup})
    decision = _decide(snap, Chargeback(FAN, 500, "pi_1", "dp_1"), Transfer(FAN, OTHER, 1))
    assert decision.outcomes[0].ok and decision.state.wallets[FAN].balance == -400
    assert decision.outcomes[1].code == INSUFFICIENT_FUNDS  # debt: no debit allowed


def test_chargebacks_never_pass_the_top_up():
    topup = Original("t1", "topup", EXTERNAL_FUNDING, ((FAN, 500),), {"providerTxId": "pi_1"})
    snap = _snap(fan=500, topups={"pi_1": topup})
    outcomes = _decide(snap, Chargeback(FAN, 300, "pi_1", "a"), Chargeback(FAN, 300, "pi_1", "b"),
                       Chargeback(FAN, 200, "pi_1", "c"), Chargeback(OTHER, 1, "pi_1", "d")).outcomes
    assert [o.ok for o in outcomes] == [True, False, True, False]
    assert outcomes[1].code == REFUND_EXCEEDS_ORIGINAL and outcomes[3].code == TOPUP_NOT_FOUND


def test_every_pair_of_events_after_a_hold_is_decided():
    for first, second in itertools.product(PAYOUT_EVENTS, repeat=2):
        decision = _decide(_snap(creator=1000), Payout(CREATOR, 100, "p"),
                           PayoutEvent(CREATOR, "p", first, "1"), PayoutEvent(CREATOR, "p", second, "2"))
        assert sum(w.balance for w in decision.state.wallets.values()) == 1000
