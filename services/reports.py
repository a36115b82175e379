"""The platform's monthly report: volume by kind, the platform's shares, money out, and the tie-out.

Read from what the checkpoint fold keeps (``services/checkpoints.py``): the month's
totals by kind (``platform_months``, one document) and the system wallets' checkpoints
at both month ends. Its cost is a handful of point reads whatever the volume.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo.database import Database

from ledger.money import EXTERNAL_FUNDING, PAYOUTS_IN_FLIGHT, PLATFORM_PROCESSING, PLATFORM_REVENUE
from ledger.periods import MS, Month, is_closed
from services.checkpoints import balance_at, watermark

# Which column of a kind's totals moved which system wallet.
COLUMNS = {PLATFORM_REVENUE: "revenue", PLATFORM_PROCESSING: "processing", PAYOUTS_IN_FLIGHT: "inFlight",
           EXTERNAL_FUNDING: "funding"}


def _tie(opening: int, net: int, closing: int) -> dict[str, Any]:
    return {"opening": opening, "net": net, "closing": closing, "ok": opening + net == closing}


def platform_month(db: Database, month: Month, now: datetime, *, settle_margin: timedelta) -> dict[str, Any]:
    """The report of ``month``; provisional until the month is closed and fully folded."""
    folded = watermark(db)
    final = is_closed(month, now, settle_margin) and folded >= month.last_instant
    end = month.last_instant if final else min(month.last_instant, folded)
    kinds = (db.platform_months.find_one({"_id": month.label}) or {}).get("kinds", {})
    platform = {}
    for wallet_id, column in COLUMNS.items():
        opening = balance_at(db, wallet_id, month.start - MS).balance
        closing = balance_at(db, wallet_id, end).balance
        platform[wallet_id] = _tie(opening, sum(k.get(column, 0) for k in kinds.values()), closing)
    # Double entry over the month: what users and system wallets moved sums to zero.
    moved = sum(k.get("users", 0) for k in kinds.values()) + sum(t["net"] for t in platform.values())
    total = _tie(0, moved, 0)
    return {"period": month.label, "provisional": not final, "kinds": kinds, "platform": platform,
            "tieOut": total}
