"""ledger.operations (partitions, job params) and ledger.timeutil."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import operations
from ledger.operations import (
    OPERATION_TYPES,
    Chargeback,
    Credit,
    Gift,
    Payout,
    PayoutEvent,
    Refund,
    Renew,
    Subscribe,
    TopUp,
    Transfer,
    Unlock,
    from_params,
    partition_of,
    to_params,
)
from ledger.splits import RULES
from ledger.timeutil import iso, parse_iso, to_ms, utcnow

ROOT = Path(__file__).resolve().parents[3]
PROPERTY = settings(max_examples=200, deadline=None, derandomize=False)

ALICE = "64b7f0c2a1b2c3d4e5f60718"
BOB = "64b7f0c2a1b2c3d4e5f60719"
SUB_ID = "64b7f0c2a1b2c3d4e5f6071a"
PERIOD_END = datetime(2024, 6, 30, 23, 59, 59, 123000, tzinfo=UTC)

ALL_OPERATIONS = [
    Transfer(ALICE, BOB, 250),
    Transfer(ALICE, BOB, 1, note="for lunch ☕"),
    Unlock(ALICE, "65a000000000000000000001"),
    Subscribe(ALICE, BOB),
    Subscribe(ALICE, BOB, auto_renew=False),
    Renew(ALICE, SUB_ID, PERIOD_END),
    Gift(ALICE, BOB, 101),
    Gift(ALICE, BOB, 5, message="thanks!"),
    TopUp(ALICE, 1000, "pi_3Nabc"),
    Credit(BOB, 42, "goodwill"),
    Payout(BOB, 1500, "65a0000000000000000000a1"),
    PayoutEvent(BOB, "65a0000000000000000000a1", "paid", "evt_1"),
    Refund(BOB, "65a0000000000000000000b2", None, "duplicate"),
    Refund(BOB, "65a0000000000000000000b2", 30, "requested_by_customer"),
    Chargeback(ALICE, 400, "pi_3Nabc", "dp_1"),
]


# --- partitions --------------------------------------------------------------

def test_partition_of_is_crc32_of_the_utf8_id():
    # 0xCBF43926 is the published CRC-32 check value of "123456789".
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert partition_of("123456789", 1000) == 0xCBF43926 % 1000 == 262
    assert partition_of(ALICE, 8) == zlib.crc32(ALICE.encode()) % 8
    assert partition_of("ünïcødé", 16) == zlib.crc32("ünïcødé".encode()) % 16


@PROPERTY
@given(wallet=st.text(), partitions=st.integers(1, 4096))
def test_partition_of_is_in_range_and_stable(wallet, partitions):
    part = partition_of(wallet, partitions)
    assert 0 <= part < partitions
    assert part == zlib.crc32(wallet.encode("utf-8")) % partitions
    assert partition_of(wallet, 1) == 0


@pytest.mark.parametrize("partitions", [0, -1])
def test_partition_of_rejects_no_partitions(partitions):
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        partition_of(ALICE, partitions)


def test_partition_of_does_not_call_hash(monkeypatch):
    def no_hash(value):
        raise AssertionError("hash() is salted per process")

    # A module global shadows the builtin for code in ledger.operations only.
    monkeypatch.setattr(operations, "hash", no_hash, raising=False)
    assert partition_of(ALICE, 8) == zlib.crc32(ALICE.encode()) % 8


def test_partition_of_is_identical_across_hash_seeds():
    ids = [f"{i:024x}" for i in range(0, 40 * 7919, 7919)] + ["platform:revenue", "é"]
    script = (
        "import json, sys; from ledger.operations import partition_of; ids = json.loads(sys.argv[1]); "
        "print(json.dumps([[partition_of(i, 8) for i in ids], [hash(i) % 8 for i in ids]]))"
    )

    def run(seed):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", script, json.dumps(ids)], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True, timeout=30)
        return json.loads(out.stdout)

    parts_1, hashes_1 = run("1")
    parts_2, hashes_2 = run("2")
    assert hashes_1 != hashes_2  # hash() would have scattered the wallets...
    assert parts_1 == parts_2  # ...partition_of does not.
    assert parts_1 == [partition_of(i, 8) for i in ids]


# --- job params --------------------------------------------------------------

def test_every_operation_type_is_covered():
    assert set(OPERATION_TYPES) == {type(op).kind for op in ALL_OPERATIONS}
    # Every operation type has an entry (possibly "no split") in the split rules.
    assert set(OPERATION_TYPES) == set(RULES)
    for kind, cls in OPERATION_TYPES.items():
        assert cls.kind == kind


@pytest.mark.parametrize("op", ALL_OPERATIONS, ids=repr)
def test_params_round_trip(op):
    params = to_params(op)
    assert "kind" not in params
    # The params are stored on a job document and shown as JSON: they must survive it.
    stored = json.loads(json.dumps(params))
    assert stored == params
    rebuilt = from_params(op.kind, stored)
    assert rebuilt == op
    assert type(rebuilt) is type(op)
    assert rebuilt.wallet == op.wallet


def test_renew_period_end_is_an_iso_string_and_comes_back_aware_utc():
    params = to_params(Renew(ALICE, SUB_ID, PERIOD_END))
    assert params == {"subscriber": ALICE, "subscription_id": SUB_ID,
                      "period_end": "2024-06-30T23:59:59.123Z"}
    back = from_params("renew", params)
    assert back.period_end == PERIOD_END
    assert back.period_end.tzinfo is not None
    assert back.period_end.utcoffset() == timedelta(0)


def test_renew_round_trip_normalises_to_utc_milliseconds():
    paris = timezone(timedelta(hours=2))
    local = datetime(2024, 7, 1, 1, 59, 59, 123456, tzinfo=paris)
    back = from_params("renew", to_params(Renew(ALICE, SUB_ID, local)))
    # Same instant to the millisecond, now in UTC; the microseconds are gone, as
    # they would be after a MongoDB round trip.
    assert back.period_end == to_ms(local) == PERIOD_END
    assert back.period_end != local


def test_from_params_does_not_mutate_its_input():
    params = to_params(Renew(ALICE, SUB_ID, PERIOD_END))
    snapshot = dict(params)
    from_params("renew", params)
    assert params == snapshot


@pytest.mark.parametrize("kind", ["withdrawal", "", "Transfer", "__class__"])
def test_from_params_rejects_unknown_type(kind):
    with pytest.raises(ValueError, match="unknown operation type"):
        from_params(kind, {"sender": ALICE, "receiver": BOB, "amount": 1})


def test_from_params_rejects_unknown_fields():
    with pytest.raises(TypeError):
        from_params("transfer", {"sender": ALICE, "receiver": BOB, "amount": 1, "admin": True})


@pytest.mark.parametrize(
    ("op", "wallet"),
    [
        (Transfer(ALICE, BOB, 1), ALICE),
        (Unlock(ALICE, "c"), ALICE),
        (Subscribe(ALICE, BOB), ALICE),
        (Renew(ALICE, SUB_ID, PERIOD_END), ALICE),
        (Gift(ALICE, BOB, 1), ALICE),
        (TopUp(BOB, 1, "p"), BOB),
        (Credit(BOB, 1, "r"), BOB),
    ],
    ids=repr,
)
def test_partition_wallet_is_the_debited_or_credited_user(op, wallet):
    assert op.wallet == wallet


def test_operations_are_immutable():
    op = Transfer(ALICE, BOB, 1)
    with pytest.raises(AttributeError):
        op.amount = 1000  # type: ignore[misc]


# --- timeutil ----------------------------------------------------------------

def test_to_ms_truncates_and_normalises_to_utc():
    assert to_ms(datetime(2024, 1, 1, 12, 0, 0, 999999, tzinfo=UTC)) == datetime(
        2024, 1, 1, 12, 0, 0, 999000, tzinfo=UTC)
    # Naive datetimes are taken as UTC (what pymongo returns without tz_aware).
    naive = to_ms(datetime(2024, 1, 1, 12, 0, 0, 1500))
    assert naive == datetime(2024, 1, 1, 12, 0, 0, 1000, tzinfo=UTC)
    assert naive.tzinfo is UTC
    shifted = to_ms(datetime(2024, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))))
    assert shifted == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert shifted.tzinfo is UTC


def test_utcnow_is_aware_utc_milliseconds():
    now = utcnow()
    assert now.tzinfo is UTC
    assert now.microsecond % 1000 == 0


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2024, 1, 1, tzinfo=UTC), "2024-01-01T00:00:00.000Z"),
        (datetime(2024, 1, 1, 0, 0, 0, 999999, tzinfo=UTC), "2024-01-01T00:00:00.999Z"),
        (datetime(2024, 1, 1, 0, 0, 0, 7000), "2024-01-01T00:00:00.007Z"),
        (datetime(2024, 1, 1, 1, 30, tzinfo=timezone(timedelta(hours=1, minutes=30))),
         "2024-01-01T00:00:00.000Z"),
        # A sub-second UTC offset shifts the millisecond digits too.
        (datetime(2024, 1, 1, 12, 0, 0, 700000, tzinfo=timezone(timedelta(seconds=1, microseconds=500000))),
         "2024-01-01T11:59:59.200Z"),
    ],
    ids=repr,
)
def test_iso(moment, text):
    assert iso(moment) == text
    assert parse_iso(text) == to_ms(moment)


@PROPERTY
@given(moment=st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1),
                           timezones=st.sampled_from([UTC, timezone(timedelta(hours=-7)),
                                                      timezone(timedelta(hours=5, minutes=45))])))
def test_iso_parse_round_trip(moment):
    assert parse_iso(iso(moment)) == to_ms(moment)
    assert iso(parse_iso(iso(moment))) == iso(moment)
