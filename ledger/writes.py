"""Document writes as plain values: what a settlement plan asks the store to do.

The domain package never talks to the store; ``services/settlement.py`` turns these
into pymongo operations, in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# What a refused conditional update means. The partition is the only writer of its
# balances, so a refused FLOOR or BUCKET guard is a broken invariant (the decision was
# made on state the store contradicts); a refused HEAD or STATE guard is contention
# (another settler, the subscription tick or the payout submitter moved first).
FLOOR, BUCKET, HEAD, STATE = "floor", "bucket", "head", "state"
INVARIANT_GUARDS = frozenset({FLOOR, BUCKET})
# Broken invariants that are no store guard: a wallet write refused without one, an
# unbalanced plan, a credit addressed to a wallet the partition does not own.
WALLET, BALANCE, ROUTING = "wallet", "balance", "routing"


@dataclass(frozen=True)
class Insert:
    doc: dict[str, Any]


@dataclass(frozen=True)
class Update:
    filter: dict[str, Any]
    change: dict[str, Any]
    upsert: bool = False
    guard: str | None = None  # set when the filter is a condition, not just the document's id


@dataclass(frozen=True)
class Delete:
    filter: dict[str, Any]


Write = Insert | Update | Delete


class BrokenInvariant(Exception):
    """The money is not what the decision says it must be: a bug or corrupted state, not contention.

    Raised by the write plan's own assertions before anything is written, and by the
    runner when the store refuses a ``FLOOR`` or ``BUCKET`` guard after the decision
    approved the debit. Never retried as a conflict: deciding again on the same state
    would only meet it again.
    """

    def __init__(self, guard: str, detail: str) -> None:
        super().__init__(f"{guard}: {detail}")
        self.guard = guard
        self.detail = detail
