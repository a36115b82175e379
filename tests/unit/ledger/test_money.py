"""ledger.money: coins are positive ints within the limit, nothing else."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from ledger import MAX_AMOUNT, InvalidAmount, coins
from ledger.money import (
    EXTERNAL_FUNDING,
    PLATFORM_PROCESSING,
    PLATFORM_REVENUE,
    SYSTEM_WALLETS,
    is_system_wallet,
    is_user_id,
    may_go_negative,
)


@pytest.mark.parametrize("value", [1, 2, 12345, MAX_AMOUNT])
def test_coins_accepts_positive_ints_up_to_max(value):
    result = coins(value)
    assert result == value
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        1.0,
        1.5,
        "10",
        None,
        0,
        -5,
        MAX_AMOUNT + 1,
        10**30,
        float("nan"),
        float("inf"),
        float("-inf"),
        b"10",
        Decimal(10),
        Fraction(10),
        [10],
        -(10**30),
    ],
    ids=repr,
)
def test_coins_rejects(value):
    with pytest.raises(InvalidAmount):
        coins(value)


def test_invalid_amount_is_a_value_error():
    assert issubclass(InvalidAmount, ValueError)


def test_coins_honours_a_configured_maximum():
    assert coins(10, maximum=10) == 10
    with pytest.raises(InvalidAmount):
        coins(11, maximum=10)
    # A larger configured maximum lifts the default one.
    assert coins(MAX_AMOUNT + 1, maximum=MAX_AMOUNT * 10) == MAX_AMOUNT + 1


def test_system_wallets():
    assert SYSTEM_WALLETS == (PLATFORM_REVENUE, PLATFORM_PROCESSING, EXTERNAL_FUNDING, "platform:payouts-in-flight")
    assert all(is_system_wallet(w) for w in SYSTEM_WALLETS)
    assert not is_system_wallet("0123456789abcdef01234567")
    assert may_go_negative(EXTERNAL_FUNDING)
    assert not may_go_negative(PLATFORM_REVENUE)
    assert not may_go_negative(PLATFORM_PROCESSING)
    assert not may_go_negative("0123456789abcdef01234567")


@pytest.mark.parametrize("value", ["0123456789abcdef01234567", "f" * 24])
def test_is_user_id_accepts_object_id_strings(value):
    assert is_user_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "0123456789ABCDEF01234567",  # upper case
        "0123456789abcdef0123456",  # 23 chars
        "0123456789abcdef012345678",  # 25 chars
        "0123456789abcdef0123456g",
        "0123456789abcdef01234567\n",  # `$` alone would allow a trailing newline
        "",
        {"$gt": ""},
        None,
        12345,
        PLATFORM_REVENUE,
        EXTERNAL_FUNDING,
    ],
    ids=repr,
)
def test_is_user_id_rejects(value):
    assert not is_user_id(value)
