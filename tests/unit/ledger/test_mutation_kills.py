"""Tests written to kill mutmut survivors in ledger/ (docs/testing.md).

Each pins a behaviour the older tests let drift: error messages operators read,
``ok is False`` (not merely falsy), what each operation says it reads, timezone
handling on a machine whose local zone is not UTC, and the routing loop.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from ledger import audit
from ledger.decide import _Refused
from ledger.money import SYSTEM_WALLETS
from ledger.operations import Reads, Renew, Subscribe, Unlock, partition_of
from ledger.routing import Router, all_buckets, bucket_id, route
from ledger.splits import SplitRuleError, split, validate_rule
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
