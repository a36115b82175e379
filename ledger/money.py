"""Coins and account ids.

Amounts are integers in minor units ("coins"). ``bool`` is a subclass of ``int`` in
Python, so it is rejected explicitly; floats are rejected even when integral, so a
value never silently changes type on its way to the ledger.
"""

from __future__ import annotations

import re

MAX_AMOUNT = 1_000_000_000

PLATFORM_REVENUE = "platform:revenue"
PLATFORM_PROCESSING = "platform:processing"
EXTERNAL_FUNDING = "external:funding"
# Coins held for payouts between the hold and the provider's answer (TigerBeetle's
# pending transfers): out of the creator's spendable balance, not yet out of Purser.
PAYOUTS_IN_FLIGHT = "platform:payouts-in-flight"
SYSTEM_WALLETS = (PLATFORM_REVENUE, PLATFORM_PROCESSING, EXTERNAL_FUNDING, PAYOUTS_IN_FLIGHT)

# User, content and subscription ids are 24 lowercase hex characters (an ObjectId
# rendered as a string). A fixed shape means a request can never smuggle a MongoDB
# operator or a system account where a user id is expected.
ID_RE = re.compile(r"^[0-9a-f]{24}\Z")  # \Z: `$` would accept a trailing newline


class InvalidAmount(ValueError):
    """An amount that is not a positive integer of coins within the limit."""


def coins(value: object, *, maximum: int = MAX_AMOUNT) -> int:
    """Validate ``value`` as a positive amount of coins and return it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAmount(f"amount must be an integer number of coins, got {type(value).__name__}")
    if value <= 0:
        raise InvalidAmount("amount must be positive")
    if value > maximum:
        raise InvalidAmount(f"amount must not exceed {maximum}")
    return value


def is_user_id(value: object) -> bool:
    """True when ``value`` has the shape of a user/content/subscription id."""
    return isinstance(value, str) and ID_RE.match(value) is not None


def is_system_wallet(wallet_id: str) -> bool:
    return wallet_id in SYSTEM_WALLETS


def may_go_negative(wallet_id: str) -> bool:
    """Only the funding mirror may be negative: it stands for money that entered.

    (A user wallet goes negative only through a provider chargeback, which is decided
    with ``may_overdraw``; reconcile reports such debt, it is not drift.)
    """
    return wallet_id == EXTERNAL_FUNDING


def bucket_may_go_negative(wallet_id: str) -> bool:
    """One partition's bucket of the platform's revenue or processing may dip below zero
    (a refund settled in a partition that collected less); the platform's sum may not."""
    return wallet_id in (EXTERNAL_FUNDING, PLATFORM_REVENUE, PLATFORM_PROCESSING)
