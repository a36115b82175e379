"""Money operations as small immutable values.

Amounts are validated on construction (:func:`ledger.money.coins`), so a job whose
stored parameters were tampered with cannot become an operation at all.

Each operation names the one wallet that decides its partition: the user wallet
it debits or, for money coming in (top-up, credit), the wallet it credits. Every
operation that touches a given wallet's balance downward is therefore settled by
one partition, in acceptance order.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, ClassVar

from ledger.money import coins
from ledger.timeutil import iso, parse_iso


@dataclass(frozen=True)
class Transfer:
    kind: ClassVar[str] = "transfer"
    sender: str
    receiver: str
    amount: int
    note: str | None = None

    def __post_init__(self) -> None:
        coins(self.amount)

    @property
    def wallet(self) -> str:
        return self.sender


@dataclass(frozen=True)
class Unlock:
    kind: ClassVar[str] = "unlock"
    user: str
    content_id: str

    @property
    def wallet(self) -> str:
        return self.user


@dataclass(frozen=True)
class Subscribe:
    kind: ClassVar[str] = "subscribe"
    subscriber: str
    creator: str
    auto_renew: bool = True

    @property
    def wallet(self) -> str:
        return self.subscriber


@dataclass(frozen=True)
class Renew:
    kind: ClassVar[str] = "renew"
    subscriber: str
    subscription_id: str
    period_end: datetime

    @property
    def wallet(self) -> str:
        return self.subscriber


@dataclass(frozen=True)
class Gift:
    kind: ClassVar[str] = "gift"
    sender: str
    creator: str
    amount: int
    message: str | None = None

    def __post_init__(self) -> None:
        coins(self.amount)

    @property
    def wallet(self) -> str:
        return self.sender


@dataclass(frozen=True)
class TopUp:
    kind: ClassVar[str] = "topup"
    user: str
    amount: int
    provider_tx_id: str

    def __post_init__(self) -> None:
        coins(self.amount)

    @property
    def wallet(self) -> str:
        return self.user


@dataclass(frozen=True)
class Credit:
    kind: ClassVar[str] = "credit"
    user: str
    amount: int
    reason: str

    def __post_init__(self) -> None:
        coins(self.amount)

    @property
    def wallet(self) -> str:
        return self.user


Operation = Transfer | Unlock | Subscribe | Renew | Gift | TopUp | Credit

OPERATION_TYPES: dict[str, type] = {
    cls.kind: cls for cls in (Transfer, Unlock, Subscribe, Renew, Gift, TopUp, Credit)
}


def partition_of(wallet_id: str, partitions: int) -> int:
    """Stable partition of a wallet: CRC-32, identical in every process and release.

    Python's ``hash()`` is salted per process and would scatter one wallet's jobs.
    """
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    return zlib.crc32(wallet_id.encode("utf-8")) % partitions


def to_params(op: Operation) -> dict[str, Any]:
    """The JSON-safe parameters stored on the job document."""
    params = asdict(op)
    if isinstance(op, Renew):
        params["period_end"] = iso(op.period_end)
    return params


def from_params(kind: str, params: dict[str, Any]) -> Operation:
    """Rebuild an operation from a job's ``type`` and ``params``."""
    try:
        cls = OPERATION_TYPES[kind]
    except KeyError:
        raise ValueError(f"unknown operation type {kind!r}") from None
    values = dict(params)
    if cls is Renew:
        values["period_end"] = parse_iso(values["period_end"])
    return cls(**values)
