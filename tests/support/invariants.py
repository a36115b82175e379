"""The money invariants every integration, concurrency and chaos test ends with."""

from __future__ import annotations

import time
from typing import Any

from pymongo.database import Database

from services.reconcile import reconcile, verify_audit


def wait_until_drained(db: Database, timeout: float = 60.0, poll: float = 0.1) -> float:
    """Wait until no job is queued and every deferred credit is applied; return the seconds."""
    started = time.monotonic()
    while db.jobs.count_documents({"status": "queued"}, limit=1) or \
            db.credits.count_documents({"applied": False}, limit=1):
        if time.monotonic() - started > timeout:
            queued = db.jobs.count_documents({"status": "queued"})
            credits = db.credits.count_documents({"applied": False})
            raise AssertionError(f"{queued} job(s) still queued, {credits} credit(s) unapplied after {timeout}s")
        time.sleep(poll)
    return time.monotonic() - started


def assert_money_invariants(db: Database, *, accepted_job_ids: set[str] | None = None) -> dict[str, Any]:
    """Sum of balances zero, no negative user wallet, balances equal the ledger,
    every job settled or failed exactly once (one transaction per settled job, one
    audit entry per terminal job), audit chains verify. Returns the figures."""
    # Credits deferred by the last batches are applied within moments; the figures
    # below compare balances with the ledger, so they are read once nothing moves.
    wait_until_drained(db, timeout=30)
    rec = reconcile(db)
    assert rec.total_balance == 0, f"sum of balances is {rec.total_balance}"
    assert not rec.negative, f"negative user wallets: {rec.negative}"
    assert not rec.drift, f"wallets differ from the ledger: {rec.drift}"
    assert not rec.unbalanced_transactions, f"unbalanced transactions: {rec.unbalanced_transactions}"
    assert not rec.jobs_without_outcome, f"job/transaction mismatch: {rec.jobs_without_outcome}"
    audit = verify_audit(db)
    assert audit.ok, f"audit chains broken: {audit.as_dict()}"
    queued = db.jobs.count_documents({"status": "queued"})
    assert queued == 0, f"{queued} job(s) still queued"
    if accepted_job_ids is not None:
        stored = {j["_id"] for j in db.jobs.find({"_id": {"$in": sorted(accepted_job_ids)}}, {"_id": 1})}
        lost = accepted_job_ids - stored
        assert not lost, f"{len(lost)} accepted job(s) lost: {sorted(lost)[:5]}"
    counts = {s: db.jobs.count_documents({"status": s}) for s in ("settled", "failed")}
    return {"wallets": rec.wallets, **counts}
