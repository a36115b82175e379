"""The results of reconcile and audit-verify runs, kept so the operator console can show the last ones.

Each run is one small document (``kind``, ``ok``, ``at``, a summary of counts and the
first findings), never the whole report: a drifting ledger must not make the record
itself large. Read on the ``kind_recent`` index (migration 0007).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.database import Database

from ledger.timeutil import utcnow

RECONCILE, VERIFY_AUDIT = "reconcile", "verify-audit"
KINDS = (RECONCILE, VERIFY_AUDIT)
FINDINGS_KEPT = 10  # first findings of each kind kept with a run


def summary(kind: str, report: dict[str, Any]) -> dict[str, Any]:
    """The counts and the first findings of a report's ``as_dict()``."""
    if kind == RECONCILE:
        return {"wallets": report["wallets"], "totalBalance": report["totalBalance"],
                "driftCount": report["driftCount"], "drift": sorted(report["drift"])[:FINDINGS_KEPT],
                "negative": report["negative"][:FINDINGS_KEPT], "debt": len(report["debt"]),
                "unbalancedTransactions": report["unbalancedTransactions"][:FINDINGS_KEPT],
                "jobsWithoutOutcome": report["jobsWithoutOutcome"][:FINDINGS_KEPT]}
    chains = report["partitions"]
    return {"chains": len(chains), "entries": sum(c["checked"] for c in chains.values()),
            "broken": sorted(p for p, c in chains.items() if not c["ok"])[:FINDINGS_KEPT],
            "missing": len(report["missing"])}


def record_run(db: Database, kind: str, report: dict[str, Any], *, now: datetime | None = None) -> dict[str, Any]:
    """Store one run of ``kind`` (``report`` is the report's ``as_dict()``); the stored document."""
    if kind not in KINDS:
        raise ValueError(f"unknown check kind {kind!r}")
    doc = {"kind": kind, "ok": bool(report["ok"]), "at": now or utcnow(), "summary": summary(kind, report)}
    db.check_runs.insert_one(doc)
    return doc


def latest_runs(db: Database) -> dict[str, dict[str, Any] | None]:
    """The newest run of each kind (None: never run), one index probe each."""
    runs = db.check_runs
    return {kind: runs.find_one({"kind": kind}, sort=[("at", -1)]) for kind in KINDS}
