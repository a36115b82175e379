"""Who writes which balance: single-writer partitions and system-wallet buckets.

Every wallet belongs to exactly one partition (CRC-32 of its id, see
:func:`ledger.operations.partition_of`); only that partition's settlement batch ever
writes its balance, so settlers of different partitions never write a common
document and never abort each other.

System wallets (``platform:revenue``, ``platform:processing``, ``external:funding``)
are credited or debited by every partition. Each is therefore stored as one
*bucket* per partition (``platform:revenue#3``); the platform's figure is the sum
of its buckets. A batch always books system entries on its own partition's bucket.

A credit to a user wallet owned by another partition is not written to that wallet:
it becomes a *deferred credit*, an insert-only document addressed to the owner
partition, merged per target partition per batch. The owner applies it in its next
batch, before deciding its own jobs. Hence the invariant, true at every instant:

    balance(w) + unapplied credits to w == sum of w's ledger entries
    sum of all balances + all unapplied credits == 0
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ledger.money import SYSTEM_WALLETS, is_system_wallet
from ledger.operations import partition_of

BUCKET_SEPARATOR = "#"


def bucket_id(system_wallet: str, partition: int) -> str:
    """The stored wallet document of ``system_wallet``'s bucket in ``partition``."""
    if not is_system_wallet(system_wallet):
        raise ValueError(f"{system_wallet!r} is not a system wallet")
    if partition < 0:
        raise ValueError("partition must be >= 0")
    return f"{system_wallet}{BUCKET_SEPARATOR}{partition}"


def parse_bucket(doc_id: str) -> tuple[str, int] | None:
    """``(system wallet, partition)`` of a bucket document id, else ``None``."""
    name, sep, part = doc_id.rpartition(BUCKET_SEPARATOR)
    if not sep or not is_system_wallet(name) or not part.isdigit():
        return None
    return name, int(part)


def all_buckets(partitions: int) -> list[str]:
    return [bucket_id(w, p) for w in SYSTEM_WALLETS for p in range(partitions)]


@dataclass(frozen=True)
class Router:
    """Routing seen from one partition's settlement batch."""

    partition: int
    partitions: int

    def __post_init__(self) -> None:
        if not 0 <= self.partition < self.partitions:
            raise ValueError(f"partition {self.partition} outside 0..{self.partitions - 1}")

    def owner(self, wallet_id: str) -> int:
        """The partition that writes ``wallet_id``'s balance (system wallets: this one's bucket)."""
        if is_system_wallet(wallet_id):
            return self.partition
        return partition_of(wallet_id, self.partitions)

    def is_local(self, wallet_id: str) -> bool:
        return self.owner(wallet_id) == self.partition

    def doc_id(self, wallet_id: str) -> str:
        """The wallet document this partition writes for ``wallet_id`` (a bucket for system wallets)."""
        return bucket_id(wallet_id, self.partition) if is_system_wallet(wallet_id) else wallet_id


@dataclass
class Routed:
    """A batch's merged balance changes, split into what it writes and what it defers."""

    local: dict[str, int] = field(default_factory=dict)  # wallet doc id -> delta (buckets resolved)
    deferred: dict[int, dict[str, int]] = field(default_factory=dict)  # partition -> wallet -> credit

    @property
    def deferred_total(self) -> int:
        return sum(sum(credits.values()) for credits in self.deferred.values())


def route(deltas: Mapping[str, int], router: Router) -> Routed:
    """Split merged per-wallet ``deltas`` into local writes and deferred credits.

    A foreign wallet only ever receives money here: every operation debits the
    wallet that routes it (owned by this partition) or a system bucket. A negative
    delta for a foreign wallet would mean a broken routing rule, so it is refused.
    """
    routed = Routed()
    for wallet_id, delta in deltas.items():
        if not delta:
            continue
        if router.is_local(wallet_id):
            doc = router.doc_id(wallet_id)
            routed.local[doc] = routed.local.get(doc, 0) + delta
        else:
            if delta < 0:
                raise ValueError(f"partition {router.partition} would debit {wallet_id!r}, "
                                 f"owned by partition {router.owner(wallet_id)}")
            target = routed.deferred.setdefault(router.owner(wallet_id), {})
            target[wallet_id] = target.get(wallet_id, 0) + delta
    return routed


def merge_credits(credits: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Sum several inbound credit documents' amounts per wallet."""
    merged: dict[str, int] = {}
    for amounts in credits:
        for wallet_id, amount in amounts.items():
            merged[wallet_id] = merged.get(wallet_id, 0) + amount
    return merged
