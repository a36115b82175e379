"""Typed views of the API's answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("settled", "failed")


@dataclass(frozen=True)
class Job:
    """A money request as the API reports it (``GET /api/jobs/<id>``)."""

    job_id: str
    type: str
    status: str
    created_at: str
    settled_at: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    replayed: bool = False  # the answer replayed an earlier request with the same key
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @property
    def settled(self) -> bool:
        return self.status == "settled"

    @classmethod
    def from_json(cls, body: dict[str, Any], replayed: bool = False) -> Job:
        return cls(body["jobId"], body["type"], body["status"], body["createdAt"], body.get("settledAt"),
                   body.get("result"), body.get("error"), replayed, body)


@dataclass(frozen=True)
class Balance:
    wallet_id: str
    balance: int  # spendable now
    incoming: int = 0  # settled for this wallet, applied within moments
    held: int = 0  # held for payouts in flight
    status: str = "active"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Balance:
        return cls(body["walletId"], body["balance"], body.get("incoming", 0), body.get("held", 0),
                   body.get("status", "active"))
