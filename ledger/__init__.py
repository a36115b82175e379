"""Purser's money rules, as pure Python.

Nothing in this package imports Flask, Celery or pymongo: the rules can be read in
one place and tested in milliseconds. The service layer (``services/``) loads the
state a batch touches, calls :func:`ledger.decide.decide_batch`, and writes what it
returns.
"""

from ledger.money import (
    EXTERNAL_FUNDING,
    MAX_AMOUNT,
    PLATFORM_PROCESSING,
    PLATFORM_REVENUE,
    SYSTEM_WALLETS,
    InvalidAmount,
    coins,
)

__all__ = [
    "EXTERNAL_FUNDING",
    "MAX_AMOUNT",
    "PLATFORM_PROCESSING",
    "PLATFORM_REVENUE",
    "SYSTEM_WALLETS",
    "InvalidAmount",
    "coins",
]
