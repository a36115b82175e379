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
