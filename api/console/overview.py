"""The overview: the last hour from Purser's own documents (services/overview.py), as figures and SVG."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from api.app_settings import settings
from api.console import charts
from api.console.blueprint import bp, page
from services import overview as figures
from services.store import process_db
from services.wallets import platform_balances


@bp.route("/", methods=["GET"])
def overview() -> Any:
    s = settings()
    data = figures.build(process_db(), s.ledger_partitions, timedelta(seconds=s.payout_resolve_after_seconds))
    minutes = [(data.start + timedelta(minutes=i)).strftime("%H:%M") for i in range(figures.WINDOW_MINUTES)]
    partitions = [f"p{p}" for p in range(s.ledger_partitions)]
    return page("overview.html", data=data, kinds=list(data.settled_per_minute),
                ops_chart=charts.stacked_bars(data.settled_per_minute, minutes),
                latency_chart=charts.lines([data.latency_p50_ms, data.latency_p99_ms], minutes),
                backlog_chart=charts.bars([c.value for c in data.backlog], partitions),
                system=platform_balances(process_db(), s.ledger_partitions), refresh_seconds=10)
