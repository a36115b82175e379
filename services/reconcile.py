"""Reconciliation and audit verification: the checks an auditor would run.

``reconcile`` recomputes every wallet balance from the ledger (``transactions``)
and compares; ``verify_audit`` walks every partition's hash chain. Both are read
only: they report drift, they never "fix" money.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pymongo.database import Database

from ledger import audit
from ledger.money import may_go_negative
from services.jobs import QUEUED


@dataclass
class ReconcileReport:
    wallets: int = 0
    total_balance: int = 0
    drift: dict[str, dict[str, int]] = field(default_factory=dict)  # wallet -> {balance, ledger}
    negative: list[str] = field(default_factory=list)
    unbalanced_transactions: list[str] = field(default_factory=list)
    jobs_without_outcome: list[str] = field(default_factory=list)  # settled/failed but inconsistent

    @property
    def ok(self) -> bool:
        return not (self.drift or self.negative or self.unbalanced_transactions or self.total_balance
                    or self.jobs_without_outcome)

    @property
    def drift_total(self) -> int:
        return sum(abs(d["balance"] - d["ledger"]) for d in self.drift.values())

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "wallets": self.wallets, "totalBalance": self.total_balance,
                "drift": self.drift, "negative": self.negative,
                "unbalancedTransactions": self.unbalanced_transactions,
                "jobsWithoutOutcome": self.jobs_without_outcome}


def ledger_balances(db: Database) -> dict[str, int]:
    pipeline = [
        {"$unwind": "$entries"},
        {"$group": {"_id": "$entries.walletId", "sum": {"$sum": "$entries.amount"}}},
    ]
    return {row["_id"]: row["sum"] for row in db.transactions.aggregate(pipeline)}


def reconcile(db: Database) -> ReconcileReport:
    report = ReconcileReport()
    from_ledger = ledger_balances(db)
    seen = set()
    for wallet in db.wallets.find({}, {"balance": 1}):
        wid, balance = wallet["_id"], wallet["balance"]
        seen.add(wid)
        report.wallets += 1
        report.total_balance += balance
        expected = from_ledger.get(wid, 0)
        if balance != expected:
            report.drift[wid] = {"balance": balance, "ledger": expected}
        if balance < 0 and not may_go_negative(wid):
            report.negative.append(wid)
    for wid, amount in from_ledger.items():
        if wid not in seen and amount:
            report.drift[wid] = {"balance": 0, "ledger": amount}
    for tx in db.transactions.aggregate([
        {"$project": {"total": {"$sum": "$entries.amount"}}}, {"$match": {"total": {"$ne": 0}}}
    ]):
        report.unbalanced_transactions.append(tx["_id"])
    # Every settled job has exactly one transaction; no failed or queued job has one.
    settled_ids = {j["_id"] for j in db.jobs.find({"status": "settled"}, {"_id": 1})}
    tx_jobs = [t["jobId"] for t in db.transactions.find({}, {"jobId": 1})]
    if len(tx_jobs) != len(set(tx_jobs)):
        report.jobs_without_outcome.append("duplicate transaction for one job")
    for missing in sorted(settled_ids.symmetric_difference(tx_jobs))[:100]:
        report.jobs_without_outcome.append(missing)
    return report


@dataclass
class AuditReport:
    partitions: dict[int, audit.ChainReport] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # terminal jobs without exactly one entry

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.partitions.values()) and not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "missing": self.missing,
                "partitions": {str(p): {"ok": r.ok, "checked": r.checked, "brokenAt": r.broken_at,
                                        "reason": r.reason} for p, r in self.partitions.items()}}


def verify_audit(db: Database) -> AuditReport:
    report = AuditReport()
    heads = {part["_id"]: part for part in db.partitions.find({})}
    # Every chain that has entries is walked, not only those with a head document:
    # deleting a partition's head must not hide edits to its chain.
    for p in sorted(set(db.auditlogs.distinct("partition")) - set(heads)):
        report.partitions[p] = audit.ChainReport(False, 0, None, "audit entries without a partition head")
    for p, part in sorted(heads.items()):
        chain = report.partitions[p] = audit.verify_chain(
            db.auditlogs.find({"partition": p}, {"_id": 0}).sort("seq", 1))
        if chain.ok and chain.checked != part.get("auditSeq", 0):
            report.partitions[p] = audit.ChainReport(False, chain.checked, None,
                                                     f"head says {part.get('auditSeq')} entries")
        elif chain.ok and chain.checked:
            last = db.auditlogs.find_one({"partition": p, "seq": part["auditSeq"]}, {"hash": 1})
            if last is None or last["hash"] != part["auditHead"]:
                report.partitions[p] = audit.ChainReport(False, chain.checked, part["auditSeq"],
                                                         "chain head does not match the partition")
    counts: dict[str, int] = {}
    for row in db.auditlogs.aggregate([{"$group": {"_id": "$jobId", "n": {"$sum": 1}}}]):
        counts[row["_id"]] = row["n"]
    for job in db.jobs.find({"status": {"$ne": QUEUED}}, {"_id": 1}):
        if counts.pop(job["_id"], 0) != 1:
            report.missing.append(job["_id"])
    report.missing += [j for j in counts]  # entries for jobs that are not terminal
    return report
