"""The money invariants every integration, concurrency and chaos test ends with."""

from __future__ import annotations

from typing import Any

from pymongo.database import Database

from services.reconcile import reconcile, verify_audit
from tests.support.waiting import wait_drained


def assert_money_invariants(db: Database, *, accepted_job_ids: set[str] | None = None) -> dict[str, Any]:
    """Sum of balances zero, no negative user wallet, balances equal the ledger,
    every job settled or failed exactly once (one transaction per settled job, one
    audit entry per terminal job), audit chains verify. Returns the figures."""
    # Credits deferred by the last batches are applied within moments; the figures
    # below compare balances with the ledger, so they are read once nothing moves.
    wait_drained(db, timeout=30)
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
