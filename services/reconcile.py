"""Reconciliation and audit verification: the checks an auditor would run.

``reconcile`` recomputes every balance from the ledger (the settled jobs' entries,
``services/journal.py``) and checks,
for every wallet, ``balance + unapplied credits to it == sum of its ledger entries``
(system wallets: per partition bucket), and that everything sums to zero.
``verify_audit`` walks every partition's hash chain, the operators' chain
(partition ``-1``, :data:`ledger.audit.OPERATOR_CHAIN`) included, and checks that
every terminal job is listed by exactly the audit entry it points to. Both are read only: they
report drift, they never "fix" money.

Memory stays bounded whatever the history: the per-wallet sums are computed by the
store (aggregation) and consumed as streams sorted by wallet id, merged with the
wallets and the unapplied credits in one pass; only system buckets (three per
partition) and capped lists of findings are held.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from pymongo.database import Database

from ledger import audit
from ledger.money import SYSTEM_WALLETS, bucket_may_go_negative, is_system_wallet, may_go_negative
from ledger.routing import parse_bucket
from ledger.states import TERMINAL_JOB_STATUSES, JobStatus
from services import journal

REPORT_CAP = 1000  # findings kept per kind; the counts stay exact


@dataclass
class ReconcileReport:
    wallets: int = 0
    total_balance: int = 0  # sum of every balance plus every unapplied credit: must be 0
    unapplied_credits: int = 0
    drift: dict[str, dict[str, int]] = field(default_factory=dict)  # wallet -> {balance, incoming, ledger}
    drift_count: int = 0
    system: dict[str, int] = field(default_factory=dict)  # platform figure per system wallet (sum of buckets)
    negative: list[str] = field(default_factory=list)
    debt: list[str] = field(default_factory=list)  # user wallets below zero after a chargeback (allowed)
    unbalanced_transactions: list[str] = field(default_factory=list)
    jobs_without_outcome: list[str] = field(default_factory=list)  # settled without entries, entries unsettled

    @property
    def ok(self) -> bool:
        return not (self.drift or self.negative or self.unbalanced_transactions or self.total_balance
                    or self.jobs_without_outcome)

    @property
    def drift_total(self) -> int:
        return sum(abs(d["balance"] + d.get("incoming", 0) - d["ledger"]) for d in self.drift.values())

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "wallets": self.wallets, "totalBalance": self.total_balance,
                "unappliedCredits": self.unapplied_credits, "systemWallets": self.system,
                "drift": self.drift, "driftCount": self.drift_count,
                "negative": self.negative, "debt": self.debt, "unbalancedTransactions": self.unbalanced_transactions,
                "jobsWithoutOutcome": self.jobs_without_outcome}

    def _drift(self, wallet_id: str, balance: int, incoming: int, ledger: int) -> None:
        self.drift_count += 1
        if len(self.drift) < REPORT_CAP:
            self.drift[wallet_id] = {"balance": balance, "incoming": incoming, "ledger": ledger}


def _ledger_rows(db: Database) -> Iterator[tuple[str, int | None, int]]:
    """(wallet, partition, sum of entries) sorted by wallet then partition, from the store."""
    pipeline = [
        {"$unwind": "$entries"},
        {"$group": {"_id": {"w": "$entries.walletId", "p": f"${journal.PARTITION}"},
                    "sum": {"$sum": "$entries.amount"}}},
        {"$sort": {"_id.w": 1, "_id.p": 1}},
    ]
    for row in journal.ledger(db).aggregate(pipeline, allowDiskUse=True):
        yield row["_id"]["w"], row["_id"].get("p"), row["sum"]


def _user_ledger(rows: Iterable[tuple[str, int | None, int]], buckets: dict[tuple[str, int], int]
                 ) -> Iterator[tuple[str, str, int]]:
    """Fold per-partition rows into one sum per user wallet; divert system rows to ``buckets``."""
    for wallet_id, group in groupby(rows, key=lambda r: r[0]):
        if wallet_id in SYSTEM_WALLETS:
            for _, partition, amount in group:
                key = (wallet_id, int(partition or 0))
                buckets[key] = buckets.get(key, 0) + amount
            continue
        yield wallet_id, "ledger", sum(amount for _, _, amount in group)


def _incoming(db: Database) -> Iterator[tuple[str, str, int]]:
    pipeline = [
        {"$match": {"applied": False}},
        {"$unwind": "$amounts"},
        {"$group": {"_id": "$amounts.walletId", "sum": {"$sum": "$amounts.amount"}}},
        {"$sort": {"_id": 1}},
    ]
    for row in db.credits.aggregate(pipeline, allowDiskUse=True):
        yield row["_id"], "incoming", row["sum"]


def _balances(db: Database) -> Iterator[tuple[str, str, int]]:
    for wallet in db.wallets.find({"system": {"$exists": False}}, {"balance": 1}).sort("_id", 1):
        yield wallet["_id"], "balance", wallet["balance"]


def reconcile(db: Database) -> ReconcileReport:
    report = ReconcileReport()
    ledger_buckets: dict[tuple[str, int], int] = {}
    bucket_balances: dict[tuple[str, int], int] = {}
    for wallet in db.wallets.find({"system": {"$exists": True}}, {"balance": 1}):
        bucket = parse_bucket(wallet["_id"])
        key = bucket if bucket is not None else (wallet["_id"], -1)  # a pre-bucket document: drift
        bucket_balances[key] = wallet["balance"]
        report.system[key[0]] = report.system.get(key[0], 0) + wallet["balance"]
        report.wallets += 1
        report.total_balance += wallet["balance"]
    # User wallets, their ledger sums and their unapplied credits merge as three streams
    # sorted by wallet id (byte order, the store's for these ASCII ids).
    streams = heapq.merge(_balances(db), _user_ledger(_ledger_rows(db), ledger_buckets), _incoming(db),
                          key=lambda r: r[0])
    for wallet_id, group in groupby(streams, key=lambda r: r[0]):
        values = {source: amount for _, source, amount in group}
        balance, incoming, ledger = values.get("balance", 0), values.get("incoming", 0), values.get("ledger", 0)
        if "balance" in values:
            report.wallets += 1
        report.total_balance += balance + incoming
        report.unapplied_credits += incoming
        if balance + incoming != ledger:
            report._drift(wallet_id, balance, incoming, ledger)
        if balance < 0 and not may_go_negative(wallet_id) and len(report.negative) < REPORT_CAP:
            report.negative.append(wallet_id)
    for key in sorted(set(bucket_balances) | set(ledger_buckets)):
        balance, ledger = bucket_balances.get(key, 0), ledger_buckets.get(key, 0)
        name = f"{key[0]}#{key[1]}"
        if balance != ledger:
            report._drift(name, balance, 0, ledger)
        if balance < 0 and not bucket_may_go_negative(key[0]) and len(report.negative) < REPORT_CAP:
            report.negative.append(name)
    for name, total in report.system.items():
        if total < 0 and not may_go_negative(name):  # a bucket may dip, the platform's figure may not
            report.negative.append(name)
    # A user wallet below zero is debt left by a provider chargeback (allowed, repaid by
    # later credits) and nothing else: any other negative balance is a finding.
    report.debt = [w for w in report.negative if not is_system_wallet(w.partition("#")[0])
                   and journal.find_one(db, {"parties": w, "type": "chargeback"}, ["_id"])]
    report.negative = [w for w in report.negative if w not in report.debt]

    # $reduce, not {"$sum": "$entries.amount"}: the embedded store resolves that array
    # path to nothing and summed every transaction to 0 (tests/settlement/test_reconcile_detects.py).
    total = {"$reduce": {"input": "$entries", "initialValue": 0, "in": {"$add": ["$$value", "$$this.amount"]}}}
    for tx in journal.ledger(db).aggregate([{"$match": journal.HAS_ENTRIES}, {"$project": {"total": total}},
                                            {"$match": {"total": {"$ne": 0}}}]):
        if len(report.unbalanced_transactions) < REPORT_CAP:
            report.unbalanced_transactions.append(tx["_id"])
    _match_jobs_and_entries(db, report)
    return report


def _match_jobs_and_entries(db: Database, report: ReconcileReport) -> None:
    """Every settled job carries its entries (their sum is checked above) and nothing but a
    settled job carries any: the journal entry and the outcome are one document."""
    unrecorded = {"status": JobStatus.SETTLED, "entries": {"$exists": False}}
    stray = {"status": {"$ne": JobStatus.SETTLED}, **journal.HAS_ENTRIES}
    for query in (unrecorded, stray):
        room = 100 - len(report.jobs_without_outcome)
        if room > 0:  # limit(0) would mean no limit
            found = db.jobs.find(query, {"_id": 1}).sort("_id", 1).limit(room)
            report.jobs_without_outcome += [j["_id"] for j in found]


@dataclass
class AuditReport:
    partitions: dict[int, audit.ChainReport] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # terminal jobs not listed by exactly their entry

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.partitions.values()) and not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "missing": self.missing,
                "partitions": {str(p): {"ok": r.ok, "checked": r.checked, "brokenAt": r.broken_at,
                                        "reason": r.reason} for p, r in self.partitions.items()}}


def listed_jobs(entry: dict[str, Any]) -> list[str]:
    """The job ids an audit entry vouches for: a batch block's records or a legacy per-job entry.

    Operator entries (freezes, roles, plans, cancellations) vouch for no job: ``[]``;
    their chain is checked link by link and against its head like any other.
    """
    if "jobs" in entry:
        return [record["jobId"] for record in entry["jobs"]]
    return [entry["jobId"]] if entry.get("jobId") else []


def _check_pointers(db: Database, partition: int, entries: Iterable[dict[str, Any]],
                    report: AuditReport) -> Iterator[dict[str, Any]]:
    """Pass entries through, checking that each listed job points back at its entry."""
    for entry in entries:
        ids = listed_jobs(entry)
        if ids:
            found = {j["_id"]: j for j in db.jobs.find({"_id": {"$in": ids}}, {"status": 1, "audit": 1})}
            for job_id in ids:
                job = found.get(job_id)
                if job is None or job.get("status") not in TERMINAL_JOB_STATUSES \
                        or job.get("audit") != {"partition": partition, "seq": entry.get("seq")}:
                    report.missing.append(job_id)
        yield entry


def verify_audit(db: Database) -> AuditReport:
    report = AuditReport()
    heads = {part["_id"]: part for part in db.partitions.find({})}
    # Every chain that has entries is walked, not only those with a head document:
    # deleting a partition's head must not hide edits to its chain.
    for p in sorted(set(db.auditlogs.distinct("partition")) - set(heads)):
        report.partitions[p] = audit.ChainReport(False, 0, None, "audit entries without a partition head")
    for p, part in sorted(heads.items()):
        # Up to the head read above: batches committing meanwhile extend the chain
        # past it, and are checked by the next run.
        entries = db.auditlogs.find({"partition": p, "seq": {"$lte": part.get("auditSeq", 0)}},
                                    {"_id": 0}).sort("seq", 1)
        chain = report.partitions[p] = audit.verify_chain(_check_pointers(db, p, entries, report))
        if chain.ok and chain.checked != part.get("auditSeq", 0):
            report.partitions[p] = audit.ChainReport(False, chain.checked, None,
                                                     f"head says {part.get('auditSeq')} entries")
        elif chain.ok and chain.checked:
            last = db.auditlogs.find_one({"partition": p, "seq": part["auditSeq"]}, {"hash": 1})
            if last is None or last["hash"] != part["auditHead"]:
                report.partitions[p] = audit.ChainReport(False, chain.checked, part["auditSeq"],
                                                         "chain head does not match the partition")
    # A terminal job that no entry points at (its outcome was written without an audit).
    for job in db.jobs.find({"status": {"$in": list(TERMINAL_JOB_STATUSES)}, "audit": {"$exists": False}},
                            {"_id": 1}).limit(REPORT_CAP):
        report.missing.append(job["_id"])
    return report
