"""A wallet's monthly statement: one line per ledger transaction, sections, and the tie-out.

Pure: the service hands in the month's transactions (as stored) and the balances at
both ends, computed by another path (checkpoints); :func:`summarize` adds the lines
up by section and checks ``opening + net == closing`` to the coin. A line names the
job, what kind of money it was, the wallet's own amount and, for revenue operations,
the gross the fan paid with the platform's revenue and processing shares beside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from ledger.audit import canonical_json
from ledger.money import PAYOUTS_IN_FLIGHT, PLATFORM_PROCESSING, PLATFORM_REVENUE
from ledger.timeutil import iso

REVENUE_KINDS = ("unlock", "subscribe", "renew", "gift")
INCOME_KINDS = REVENUE_KINDS + ("transfer", "topup", "credit")
# CSV columns, in order; JSON lines carry the same keys.
LINE_FIELDS = ("at", "jobId", "section", "kind", "amount", "gross", "creatorShare", "platformRevenue",
               "processing", "counterpartyId", "originalJobId")


def _by_wallet(tx: Mapping[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in tx["entries"]:
        out[e["walletId"]] = out.get(e["walletId"], 0) + e["amount"]
    return out


def _section(kind: str, mine: int, moved: Mapping[str, int]) -> str:
    if kind == "refund":
        return "refunds"
    if kind == "chargeback":
        return "chargebacks"
    if kind == "payout":
        return "payouts.requested"
    if kind == "payout_event":
        return "payouts.released" if PAYOUTS_IN_FLIGHT in moved else "payouts.returned"
    return "income" if mine > 0 else "spending"


def statement_line(tx: Mapping[str, Any], wallet_id: str) -> dict[str, Any]:
    """One transaction as a line of ``wallet_id``'s statement."""
    moved = _by_wallet(tx)
    mine = moved.get(wallet_id, 0)
    kind = tx["type"]
    section = _section(kind, mine, moved)
    others = [w for w, a in moved.items() if w != wallet_id and ":" not in w]
    line: dict[str, Any] = {"at": iso(tx["createdAt"]), "jobId": tx["_id"], "section": section, "kind": kind,
                            "amount": mine, "gross": None, "creatorShare": None, "platformRevenue": None,
                            "processing": None, "counterpartyId": others[0] if others else None,
                            "originalJobId": tx.get("refundOf")}
    if kind in REVENUE_KINDS or kind == "refund":
        # The fan's side and the platform's shares of the same money (a refund: given back).
        line["gross"] = -sum(a for w, a in moved.items() if a < 0 and ":" not in w) if kind != "refund" \
            else sum(a for w, a in moved.items() if a > 0 and ":" not in w)
        line["creatorShare"] = mine
        line["platformRevenue"] = moved.get(PLATFORM_REVENUE, 0)
        line["processing"] = moved.get(PLATFORM_PROCESSING, 0)
    elif kind in ("transfer", "topup", "credit", "chargeback"):
        line["gross"] = abs(mine)
    return line


def _add(section: dict[str, int], line: Mapping[str, Any]) -> None:
    section["count"] = section.get("count", 0) + 1
    section["amount"] = section.get("amount", 0) + line["amount"]
    for name in ("gross", "platformRevenue", "processing"):
        if line.get(name) is not None:
            section[name] = section.get(name, 0) + line[name]


def summarize(lines: Iterable[Mapping[str, Any]], opening: int, closing: int,
              paid: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Sections by kind, the net movement and the tie-out of a statement's lines.

    ``paid`` (count, amount) reports payouts the provider paid in the month: they move
    no coin of the wallet (the hold already did) and so are outside the tie-out.
    """
    sections: dict[str, Any] = {"income": {}, "spending": {}, "refunds": {}, "chargebacks": {},
                                "payouts": {"requested": {}, "released": {}, "returned": {},
                                            "paid": dict(paid or {"count": 0, "amount": 0})}}
    net = 0
    count = 0
    for line in lines:
        count += 1
        net += line["amount"]
        name = line["section"]
        if name.startswith("payouts."):
            _add(sections["payouts"][name.split(".", 1)[1]], line)
        elif name in ("income", "spending"):
            _add(sections[name].setdefault(line["kind"], {}), line)
        else:
            _add(sections[name], line)
    return {"openingBalance": opening, "closingBalance": closing, "net": net, "movements": count,
            **sections, "tieOut": {"opening": opening, "net": net, "closing": closing,
                                   "ok": opening + net == closing}}


def lines_digest(lines: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 over the canonical JSON of every line in order: what a stored statement vouches for."""
    digest = hashlib.sha256()
    for line in lines:
        digest.update(canonical_json(line).encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


def statement_hash(head: Mapping[str, Any]) -> str:
    """The hash of a stored statement's head (which carries its lines' digest)."""
    return hashlib.sha256(canonical_json(head).encode("ascii")).hexdigest()
