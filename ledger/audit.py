"""Hash-chained audit entries.

Each partition keeps its own chain: an entry's hash is SHA-256 over the previous
entry's hash and the canonical JSON of the entry (sorted keys, no whitespace,
dates as ISO-8601 with milliseconds). Changing, removing or reordering any entry
breaks every later hash, which :func:`verify_chain` reports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.timeutil import iso

GENESIS = "0" * 64
# The partition id of the operators' own chain (freezes, roles, plans, cancellations).
# An int like the settlement partitions, so chains sort together; never a ledger partition.
OPERATOR_CHAIN = -1
# The chain that vouches for stored monthly statements (one entry per statement).
STATEMENT_CHAIN = -2
# Fields that describe the stored copy, not the fact: never hashed.
_UNHASHED = frozenset({"_id", "hash"})


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"not canonical JSON: {type(value).__name__}")


def canonical_json(entry: Mapping[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in _UNHASHED}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_default)


def entry_hash(entry: Mapping[str, Any], prev_hash: str) -> str:
    return hashlib.sha256((prev_hash + canonical_json(entry)).encode("ascii")).hexdigest()


def seal(entry: dict[str, Any], prev_hash: str) -> dict[str, Any]:
    """Return ``entry`` with ``prevHash`` and ``hash`` set, chained to ``prev_hash``."""
    sealed = dict(entry, prevHash=prev_hash)
    sealed["hash"] = entry_hash(sealed, prev_hash)
    return sealed


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    checked: int
    broken_at: int | None = None  # the ``seq`` of the first bad entry
    reason: str | None = None


def verify_chain(entries: Iterable[Mapping[str, Any]], start_hash: str = GENESIS) -> ChainReport:
    """Walk entries in ``seq`` order and check every link and every hash."""
    prev = start_hash
    expected_seq: int | None = None
    checked = 0
    for entry in entries:
        seq = entry.get("seq")
        if expected_seq is not None and seq != expected_seq:
            return ChainReport(False, checked, seq, f"sequence gap: expected {expected_seq}")
        if entry.get("prevHash") != prev:
            return ChainReport(False, checked, seq, "prevHash does not match the previous entry")
        if entry_hash(entry, prev) != entry.get("hash"):
            return ChainReport(False, checked, seq, "hash does not match the entry's content")
        prev = entry["hash"]
        expected_seq = (seq + 1) if isinstance(seq, int) else None
        checked += 1
    return ChainReport(True, checked)
