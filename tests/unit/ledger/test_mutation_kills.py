"""Tests written to kill mutmut survivors in ledger/ (docs/testing.md).

Each pins a behaviour the older tests let drift: error messages operators read,
``ok is False`` (not merely falsy), what each operation says it reads, timezone
handling on a machine whose local zone is not UTC, and the routing loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from ledger import audit
from ledger.decide import (
    PAYOUT_STATE_CONFLICT,
    WALLET_NOT_FOUND,
    ContentInfo,
    Entry,
    Original,
    PayoutState,
    Snapshot,
    WalletState,
    decide_batch,
)
from ledger.money import (
    EXTERNAL_FUNDING,
    PAYOUTS_IN_FLIGHT,
    PLATFORM_PROCESSING,
    PLATFORM_REVENUE,
    SYSTEM_WALLETS,
)
from ledger.money_out import payout_moves
from ledger.operations import Payout, PayoutEvent, Reads, Refund, Renew, Subscribe, TopUp, Unlock, partition_of
from ledger.routing import Router, all_buckets, bucket_id, route
from ledger.rules import Refused as _Refused
from ledger.splits import SplitRuleError, allocate, split, validate_rule
from ledger.timeutil import to_ms, utcnow

# --- audit -----------------------------------------------------------------------

def _chain(n: int) -> list[dict]:
    entries, prev = [], audit.GENESIS
    for seq in range(1, n + 1):
        entry = audit.seal({"seq": seq, "v": seq}, prev)
        entries.append(entry)
        prev = entry["hash"]
    return entries


def test_verify_chain_reports_each_break_with_ok_false_and_its_reason():
    gap = _chain(3)
    del gap[1]
    report = audit.verify_chain(gap)
    assert report.ok is False and report.reason == "sequence gap: expected 2"

    relinked = _chain(2)
    relinked[1] = dict(relinked[1], prevHash="f" * 64)
    report = audit.verify_chain(relinked)
    assert report.ok is False and report.reason == "prevHash does not match the previous entry"

    edited = _chain(2)
    edited[1] = dict(edited[1], v=99)
    report = audit.verify_chain(edited)
    assert report.ok is False and report.reason == "hash does not match the entry's content"


def test_non_canonical_values_are_refused_by_name():
    with pytest.raises(TypeError, match=r"^not canonical JSON: set$"):
        audit.canonical_json({"x": {1}})


# --- decide ------------------------------------------------------------------------

def test_refused_carries_its_code_as_the_message():
    assert str(_Refused("INSUFFICIENT_FUNDS")) == "INSUFFICIENT_FUNDS"


# --- operations --------------------------------------------------------------------

def test_each_operation_names_everything_its_decision_reads():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert Unlock("u", "c").reads() == Reads(wallets={"u"}, contents={"c"}, unlocks={("u", "c")})
    assert Subscribe("s", "k").reads() == Reads(wallets={"s", "k"}, plans={"k"}, subscriber_pairs={("s", "k")})
    assert Renew("s", "sub-1", now).reads() == Reads(wallets={"s"}, subscriptions={"sub-1"})


def test_reads_update_is_a_union_of_every_field():
    a = Reads(wallets={"a"}, contents={"c1"}, unlocks={("a", "c1")}, plans={"p1"}, subscriptions={"s1"},
              subscriber_pairs={("a", "p1")}, payouts={"po1"}, originals={"j1"}, topups={"t1"})
    b = Reads(wallets={"b"}, contents={"c2"}, unlocks={("b", "c2")}, plans={"p2"}, subscriptions={"s2"},
              subscriber_pairs={("b", "p2")}, payouts={"po2"}, originals={"j2"}, topups={"t2"})
    merged = a.update(b)
    assert merged is a
    assert merged == Reads(wallets={"a", "b"}, contents={"c1", "c2"}, unlocks={("a", "c1"), ("b", "c2")},
                           plans={"p1", "p2"}, subscriptions={"s1", "s2"},
                           subscriber_pairs={("a", "p1"), ("b", "p2")}, payouts={"po1", "po2"},
                           originals={"j1", "j2"}, topups={"t1", "t2"})


def test_partition_count_below_one_is_refused_with_its_message():
    with pytest.raises(ValueError, match=r"^partitions must be >= 1$"):
        partition_of("w", 0)


# --- routing -----------------------------------------------------------------------

def test_all_buckets_lists_every_system_wallet_in_every_partition():
    assert all_buckets(2) == [f"{w}#{p}" for w in SYSTEM_WALLETS for p in range(2)]
    assert all_buckets(0) == []


def test_bucket_and_router_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"^'alice' is not a system wallet$"):
        bucket_id("alice", 0)
    with pytest.raises(ValueError, match=r"^partition must be >= 0$"):
        bucket_id(SYSTEM_WALLETS[0], -1)
    with pytest.raises(ValueError, match=r"^partition 4 outside 0\.\.3$"):
        Router(4, 4)


def test_route_skips_zero_deltas_and_goes_on():
    router = Router(0, 4)
    local = next(f"w{i}" for i in range(100) if partition_of(f"w{i}", 4) == 0)
    routed = route({"zero": 0, local: 5}, router)
    assert routed.local == {local: 5}


def test_route_refuses_to_debit_a_foreign_wallet_naming_both_partitions():
    router = Router(0, 4)
    foreign = next(f"w{i}" for i in range(100) if partition_of(f"w{i}", 4) == 1)
    with pytest.raises(ValueError, match=rf"^partition 0 would debit '{foreign}', owned by partition 1$"):
        route({foreign: -1}, router)


# --- splits ------------------------------------------------------------------------

def test_split_and_rule_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"^gross must be a non-negative integer$"):
        split(-1, (("creator", 10_000),))
    for rule, message in [((), "r: empty rule"),
                          ((("a", 5000), ("a", 5000)), "r: a party appears twice"),
                          ((("a", -1), ("b", 10_001)), "r: share of a must be a non-negative integer"),
                          ((("a", 1),), "r: shares sum to 1, not 10000")]:
        with pytest.raises(SplitRuleError) as err:
            validate_rule("r", rule)
        assert str(err.value) == message


# --- time --------------------------------------------------------------------------

@pytest.fixture
def not_utc(monkeypatch: pytest.MonkeyPatch):
    """A local zone 5 hours behind UTC, as on a developer's laptop."""
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_naive_datetimes_are_taken_as_utc_whatever_the_local_zone(not_utc):
    assert to_ms(datetime(2026, 1, 1, 12, 0, 0, 123456)) == datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)


def test_utcnow_is_utc_whatever_the_local_zone(not_utc):
    assert abs(utcnow() - datetime.now(UTC)) < timedelta(seconds=5)


# --- money out (payouts, refunds, chargebacks) -----------------------------------------

def test_money_out_operations_name_what_they_read():
    from ledger.operations import Chargeback, Payout, PayoutEvent, Refund

    assert Payout("u", 5, "po-1").reads() == Reads(wallets={"u"}, payouts={"po-1"})
    assert PayoutEvent("u", "po-1", "paid", "ev-1").reads() == Reads(wallets={"u"}, payouts={"po-1"})
    assert Refund("d", "job-1", None, "duplicate").reads() == Reads(wallets={"d"}, originals={"job-1"})
    assert Chargeback("u", 5, "ptx-1", "ev-1").reads() == Reads(wallets={"u"}, topups={"ptx-1"})
    with pytest.raises(ValueError, match=r"^unknown payout event 'lost'$"):
        PayoutEvent("u", "po-1", "lost", "ev-1")
    with pytest.raises(ValueError, match=r"^unknown refund reason 'bored'$"):
        Refund("d", "job-1", None, "bored")


def test_allocate_table_and_refusals():
    from ledger.splits import allocate

    # A literal table: 10 over weights 3/3/4 -> exact; 2 over 1/1/1 -> 0.67 each, ties to the first.
    assert allocate(10, [("a", 3), ("b", 3), ("c", 4)]) == {"a": 3, "b": 3, "c": 4}
    assert allocate(2, [("a", 1), ("b", 1), ("c", 1)]) == {"a": 1, "b": 1, "c": 0}
    assert allocate(5, [("a", 10), ("b", 0)]) == {"a": 5, "b": 0}
    assert allocate(0, [("a", 1)]) == {"a": 0}
    assert allocate(0, []) == {}
    assert allocate(0, [("a", 0)]) == {"a": 0}
    assert allocate(2, [("a", 1), ("a", 1)]) == {"a": 2}  # a party listed twice adds up
    for amount in (-1, True, 1.5):
        with pytest.raises(ValueError, match=r"^amount must be a non-negative integer$"):
            allocate(amount, [("a", 5)])
    for amount, weights in [(1, [("a", 0)]), (6, [("a", 5)]), (1, [("a", -1), ("b", 3)]), (1, [])]:
        with pytest.raises(ValueError, match=r"^amount must not exceed the sum of non-negative weights$"):
            allocate(amount, weights)


def test_a_party_listed_twice_gets_the_sum_of_its_shares():
    # a holds all the weight, so all 10 (5 + 5, no leftover coin).
    assert allocate(10, [("a", 5), ("a", 5)]) == {"a": 10}
    # 7 over a:3, b:3, a:3 -> a 14/3 = 4.67, b 7/3 = 2.33: floors 2 + 2 and 2, the one
    # leftover coin to a (the remainders tie; a is listed first).
    assert allocate(7, [("a", 3), ("b", 3), ("a", 3)]) == {"a": 5, "b": 2}


# --- money out, within one batch (later operations see earlier effects) ---------------

_NOW = datetime(2026, 1, 1, tzinfo=UTC)
_FAN, _CREATOR = "f" * 24, "c" * 24
_CONTENT = "e" * 24


def _money_out_snapshot(**kw):
    wallets = {_FAN: WalletState(0), _CREATOR: WalletState(1000), PLATFORM_REVENUE: WalletState(0),
               PLATFORM_PROCESSING: WalletState(0), EXTERNAL_FUNDING: WalletState(0),
               PAYOUTS_IN_FLIGHT: WalletState(0)}
    return Snapshot(wallets=wallets, **kw)


# A hold of 600 from a creator holding 1000, then one provider event in the same batch:
# (event) -> (event job settles?, payout status after, creator, in flight, funding mirror).
HOLD_THEN_EVENT = {
    "paid": (True, "paid", 400, 0, 600),
    "failed": (True, "failed", 1000, 0, 0),
    "expired": (True, "expired", 1000, 0, 0),
    "returned": (False, "pending", 400, 600, 0),  # a pending payout was never paid: conflict
}


@pytest.mark.parametrize("event", sorted(HOLD_THEN_EVENT))
def test_a_hold_and_a_provider_event_in_one_batch_act_on_the_held_payout(event):
    ok, status, creator, in_flight, funding = HOLD_THEN_EVENT[event]
    decision = decide_batch([("job-1", Payout(_CREATOR, 600, "p1")),
                             ("job-2", PayoutEvent(_CREATOR, "p1", event, "ev-1"))],
                            _money_out_snapshot(), _NOW)
    hold, answer = decision.outcomes
    assert hold.ok is True
    assert answer.ok is ok
    if not ok:
        assert answer.code == PAYOUT_STATE_CONFLICT
    balances = {w: s.balance for w, s in decision.state.wallets.items()}
    assert (balances[_CREATOR], balances[PAYOUTS_IN_FLIGHT], balances[EXTERNAL_FUNDING]) == (
        creator, in_flight, funding)
    assert decision.state.payouts == {"p1": PayoutState("p1", _CREATOR, 600, status)}


def test_a_fully_refunded_unlock_can_be_bought_again_in_the_same_batch():
    # 99 coins: 79 / 15 / 5 (80 % = 79.2, 15 % = 14.85, 5 % = 4.95; the two leftover coins
    # to the larger remainders, processing .95 and revenue .85).
    original = Original("orig", "unlock", _FAN, ((_CREATOR, 79), (PLATFORM_REVENUE, 15),
                                                 (PLATFORM_PROCESSING, 5)), {"contentId": _CONTENT})

    def snap():
        return _money_out_snapshot(contents={_CONTENT: ContentInfo(_CONTENT, _CREATOR, 99)},
                                   unlocks={(_FAN, _CONTENT)}, originals={"orig": original})

    refunded = decide_batch([("job-1", Refund(_CREATOR, "orig", None, "duplicate"))], snap(), _NOW)
    assert refunded.outcomes[0].ok is True
    assert refunded.state.unlocks == set()

    again = decide_batch([("job-1", Refund(_CREATOR, "orig", None, "duplicate")),
                          ("job-2", Unlock(_FAN, _CONTENT))], snap(), _NOW)
    assert [o.ok for o in again.outcomes] == [True, True]
    assert again.state.unlocks == {(_FAN, _CONTENT)}
    # The fan paid 99, got 99 back, paid 99 again; the creator gave back 79 and earned 79.
    assert again.deltas == {}
    assert (again.state.wallets[_FAN].balance, again.state.wallets[_CREATOR].balance) == (0, 1000)


def test_a_refund_whose_debtor_has_no_wallet_fails_and_the_batch_goes_on():
    original = Original("orig", "unlock", _FAN, ((_CREATOR, 79), (PLATFORM_REVENUE, 15),
                                                 (PLATFORM_PROCESSING, 5)), {"contentId": _CONTENT})
    snap = _money_out_snapshot(originals={"orig": original})
    del snap.wallets[_CREATOR]
    decision = decide_batch([("job-1", Refund(_CREATOR, "orig", None, "duplicate")),
                             ("job-2", TopUp(_FAN, 5, "pi_1"))], snap, _NOW)
    refused, topup = decision.outcomes
    assert refused.ok is False
    assert (refused.code, refused.message) == (WALLET_NOT_FOUND, "The paying wallet does not exist.")
    assert topup.ok is True
    assert decision.state.wallets[_FAN].balance == 5


def test_an_operation_without_a_decider_stops_the_batch_naming_its_type():
    @dataclass(frozen=True)
    class Orphan:
        kind = "orphan"

    with pytest.raises(TypeError, match=r"^no decider for Orphan$"):
        decide_batch([("job-1", Orphan())], Snapshot(), _NOW)


def test_payout_moves_table_and_an_unknown_move_refused_by_name():
    assert payout_moves("u", 7, "post") == [Entry(PAYOUTS_IN_FLIGHT, -7), Entry(EXTERNAL_FUNDING, 7)]
    assert payout_moves("u", 7, "void") == [Entry(PAYOUTS_IN_FLIGHT, -7), Entry("u", 7)]
    assert payout_moves("u", 7, "return") == [Entry(EXTERNAL_FUNDING, -7), Entry("u", 7)]
    with pytest.raises(ValueError, match=r"^unknown payout move 'teleport'$"):
        payout_moves("u", 7, "teleport")


def test_after_small_refunds_from_one_leg_the_rest_comes_from_what_each_leg_has_left():
    # 99 coins: 79 / 15 / 5. A 1-coin refund goes whole to the leg with the most left (ties
    # to the first listed): the creator's, while it has >= 15 left, i.e. for 65 refunds.
    # What is left is then 14 / 15 / 5, and refunding it all must give back exactly that.
    original = Original("orig", "unlock", _FAN, ((_CREATOR, 79), (PLATFORM_REVENUE, 15),
                                                 (PLATFORM_PROCESSING, 5)), {"contentId": _CONTENT})
    ops = [(f"job-{i}", Refund(_CREATOR, "orig", 1, "requested_by_customer")) for i in range(65)]
    ops.append(("job-last", Refund(_CREATOR, "orig", None, "requested_by_customer")))
    decision = decide_batch(ops, _money_out_snapshot(originals={"orig": original}), _NOW)
    assert all(o.ok for o in decision.outcomes)
    assert [o.result["legs"] for o in decision.outcomes[:65]] == [
        {_CREATOR: 1, PLATFORM_REVENUE: 0, PLATFORM_PROCESSING: 0}] * 65
    last = decision.outcomes[-1]
    assert last.result["legs"] == {_CREATOR: 14, PLATFORM_REVENUE: 15, PLATFORM_PROCESSING: 5}
    assert {e.wallet_id: e.amount for e in last.entries} == {
        _CREATOR: -14, PLATFORM_REVENUE: -15, PLATFORM_PROCESSING: -5, _FAN: 34}
    assert decision.state.originals["orig"].reversed == {_CREATOR: 79, PLATFORM_REVENUE: 15,
                                                         PLATFORM_PROCESSING: 5}
