"""The write plan of one settlement batch: decided outcomes -> every document it writes.

Pure: documents are plain dicts and writes plain values (:class:`Insert`,
:class:`Update`, :class:`Delete`), so the whole mapping is unit-tested without a
store (``ledger/writes.py``); ``services/settlement.py`` executes a plan in one
transaction, in the order of :data:`COLLECTIONS`, then the audit block, the
partition head and the wallets.

Every document here has the batch's partition as its only writer: its jobs (a settled
job is its own ledger record, :func:`ledger_fields`), its audit block and head, its own wallets and buckets, and the
credits addressed to it (marked applied). Credits for wallets owned by other
partitions are inserted, never updated, so they cannot conflict either.

A conditional :class:`~ledger.writes.Update` is a *guard*: it matches only while the
state the decision read still holds; ``guard`` names what it protects
(``ledger/writes.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger import audit
from ledger.decide import Failed, Outcome, Settled
from ledger.effects import Reversal
from ledger.money import bucket_may_go_negative, is_system_wallet
from ledger.operations import OPERATION_TYPES
from ledger.routing import Router, merge_credits, parse_bucket, route
from ledger.states import Actor, JobStatus, WalletStatus
from ledger.writes import BALANCE, BUCKET, FLOOR, HEAD, ROUTING, STATE, BrokenInvariant, Insert, Update, Write

# Collections written in bulk, in this order, before the audit block and the partition head.
# There is no ``transactions``: the job's update carries its ledger entries (issue 24).
COLLECTIONS = ("jobs", "unlocks", "subscriptions", "payouts", "credits")


@dataclass(frozen=True)
class PartitionHead:
    """The partition document as the batch read it: the sequence its write is guarded by."""

    partition: int
    seq: int
    audit_seq: int
    audit_head: str

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> PartitionHead:
        return cls(doc["_id"], doc["seq"], doc["auditSeq"], doc["auditHead"])


@dataclass
class WritePlan:
    """Everything one batch writes, built before the first write."""

    writes: dict[str, list[Write]] = field(default_factory=lambda: {name: [] for name in COLLECTIONS})
    audit_block: dict[str, Any] = field(default_factory=dict)
    head: Update | None = None  # the partition document: seq guard, new audit head
    wallets: list[Update] = field(default_factory=list)
    targets: set[int] = field(default_factory=set)  # partitions owed a doorbell (credits sent)

    @property
    def documents(self) -> int:
        """Documents written: the bulk writes, the audit block, the head and the wallets."""
        return sum(len(ops) for ops in self.writes.values()) + 2 + len(self.wallets)


def credit_amounts(credit: Mapping[str, Any]) -> dict[str, int]:
    """A deferred credit document's amounts per wallet."""
    return {row["walletId"]: row["amount"] for row in credit["amounts"]}


def plan_batch(router: Router, jobs: Sequence[dict[str, Any]], outcomes: Sequence[Outcome],
               deltas: Mapping[str, int], inbound: Sequence[dict[str, Any]], head: PartitionHead,
               now: datetime) -> WritePlan:
    """Every write of one decided batch (``deltas`` merged per wallet by ``decide_batch``)."""
    batch_seq, block_seq = head.seq + 1, head.audit_seq + 1
    plan = WritePlan()
    records = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        _plan_job(plan, router, job, outcome, block_seq, now)
        records.append(audit_record(job, outcome, router))
    routed = route(deltas, router)
    plan.writes["credits"] += [_mark_applied(credit, batch_seq, now) for credit in inbound]
    credits_out = _plan_credits_out(plan, router.partition, routed.deferred, batch_seq, now)
    plan.audit_block = audit.seal({
        "partition": router.partition, "seq": block_seq, "batch": batch_seq, "createdAt": now, "jobs": records,
        "creditsIn": [{"creditId": c["_id"], "from": c["from"], "amounts": c["amounts"]} for c in inbound],
        "creditsOut": credits_out}, head.audit_head)
    plan.head = Update({"_id": router.partition, "seq": head.seq},
                       {"$set": {"auditSeq": block_seq, "auditHead": plan.audit_block["hash"], "lastSettledAt": now},
                        "$inc": {"seq": 1}}, guard=HEAD)
    local = dict(routed.local)
    for wallet_id, amount in merge_credits(credit_amounts(c) for c in inbound).items():
        if not router.is_local(wallet_id):
            raise BrokenInvariant(ROUTING, f"credit for {wallet_id} addressed to partition {router.partition}")
        local[wallet_id] = local.get(wallet_id, 0) + amount
    plan.wallets = wallet_writes(local, overdraw(outcomes), now)
    assert_balanced(plan, outcomes, inbound)
    return plan


def assert_balanced(plan: WritePlan, outcomes: Iterable[Outcome], inbound: Iterable[Mapping[str, Any]]) -> None:
    """Before anything is written: every record sums to zero, and so does the batch.

    What the batch adds to its own balances plus what it sends to other partitions is
    exactly what it received; the store's guards check the same money after writing.
    """
    for outcome in outcomes:
        if isinstance(outcome, Settled) and sum(e.amount for e in outcome.entries) != 0:
            raise BrokenInvariant(BALANCE, f"job {outcome.job_id}: entries do not sum to zero")
    kept = sum(w.change["$inc"]["balance"] for w in plan.wallets)
    sent = sum(row["amount"] for w in plan.writes["credits"] if isinstance(w, Insert) for row in w.doc["amounts"])
    received = sum(sum(credit_amounts(c).values()) for c in inbound)
    if kept + sent != received:
        raise BrokenInvariant(BALANCE, f"batch moves {kept} + {sent} coins but received {received}")


def _plan_job(plan: WritePlan, router: Router, job: dict[str, Any], outcome: Outcome, block_seq: int,
              now: datetime) -> None:
    for effect in outcome.effects:
        write = effect.write(job, now)
        if write is not None:
            plan.writes[effect.collection].append(write)
    plan.writes["jobs"].append(job_update(job, outcome, now, {"partition": router.partition, "seq": block_seq}))


def ledger_fields(job: Mapping[str, Any], outcome: Settled) -> dict[str, Any]:
    """What makes a settled job its own journal entry: its entries (summing to zero), the
    user wallets they touch (``parties``, what history is looked up by) and what it reverses.

    Dated by the job's ``settledAt``, placed by its ``audit`` pointer (partition, block):
    ``services/journal.py`` shows readers the record under its old names.
    """
    fields: dict[str, Any] = {"entries": [{"walletId": e.wallet_id, "amount": e.amount} for e in outcome.entries],
                              "parties": _parties(outcome.entries)}
    if "providerTxId" in outcome.result and job["type"] == "topup":
        fields["providerTxId"] = outcome.result["providerTxId"]
    for effect in outcome.effects:
        if isinstance(effect, Reversal):  # a refund or chargeback names its original
            fields.update(effect.annotation())
    return fields


def _parties(entries: Iterable[Any]) -> list[str]:
    """The user wallets of a transaction: what its owner's history is looked up by."""
    return sorted({e.wallet_id for e in entries if not is_system_wallet(e.wallet_id)})


def job_update(job: dict[str, Any], outcome: Outcome, now: datetime, pointer: dict[str, int]) -> Update:
    """The job's terminal status, result or error, the audit block that lists it and, when
    settled, its ledger entries: one document for the outcome and its journal entry."""
    if isinstance(outcome, Settled):
        fields = {"status": JobStatus.SETTLED, "settledAt": now, "result": outcome.result, "error": None,
                  **ledger_fields(job, outcome)}
    else:
        fields = {"status": JobStatus.FAILED, "settledAt": now, "result": None,
                  "error": {"code": outcome.code, "message": outcome.message}}
    fields["audit"] = pointer
    # Filtered on _id alone on purpose: the job was read as queued inside this same
    # transaction, so a concurrent change to it is a WriteConflict (snapshot isolation),
    # and every status change also moves the partition's seq under a guard. An extra
    # ``status`` predicate would add nothing but costs the embedded store its _id
    # point-lookup fast path: 0.8 instead of 1.35 ms per job (docs/performance.md).
    # The same two facts are what keep a job from being settled twice now that no
    # ``transactions.jobId`` unique index stands behind them (there is no second
    # document to collide with: the entries live on the job and are $set, not added).
    return Update({"_id": job["_id"]}, {"$set": fields, "$inc": {"attempts": 1}})


def _mark_applied(credit: Mapping[str, Any], batch_seq: int, now: datetime) -> Update:
    # Guarded on applied: False, so a credit read stale is refused, never applied twice.
    return Update({"_id": credit["_id"], "applied": False},
                  {"$set": {"applied": True, "appliedAt": now, "appliedIn": batch_seq}}, guard=STATE)


def _plan_credits_out(plan: WritePlan, partition: int, deferred: Mapping[int, Mapping[str, int]],
                      batch_seq: int, now: datetime) -> list[dict[str, Any]]:
    """One insert-only credit per target partition; returns the audit block's ``creditsOut``."""
    credits_out = []
    for target, amounts in sorted(deferred.items()):
        credit_id = f"{partition}:{batch_seq}:{target}"
        rows = [{"walletId": w, "amount": a} for w, a in sorted(amounts.items())]
        plan.writes["credits"].append(Insert({"_id": credit_id, "to": target, "from": partition, "batch": batch_seq,
                                              "amounts": rows, "applied": False, "createdAt": now}))
        credits_out.append({"creditId": credit_id, "to": target, "amounts": rows})
        plan.targets.add(target)
    return credits_out


def overdraw(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """What the batch may take below zero: provider chargebacks only (debt), per user wallet."""
    allowed: dict[str, int] = {}
    for outcome in outcomes:
        if isinstance(outcome, Settled) and outcome.kind in OPERATION_TYPES \
                and OPERATION_TYPES[outcome.kind].may_overdraw:
            for e in outcome.entries:
                if e.amount < 0 and not is_system_wallet(e.wallet_id):
                    allowed[e.wallet_id] = allowed.get(e.wallet_id, 0) - e.amount
    return allowed


def wallet_writes(local: Mapping[str, int], allowed_debt: Mapping[str, int], now: datetime) -> list[Update]:
    """One merged increment per wallet document this partition owns, debits guarded."""
    writes = []
    for doc_id, delta in sorted(local.items()):
        if not delta:
            continue
        update: dict[str, Any] = {"$inc": {"balance": delta, "version": 1}, "$set": {"lastTransactionAt": now}}
        bucket = parse_bucket(doc_id)
        if delta < 0 and bucket is not None and not bucket_may_go_negative(bucket[0]):
            # Held payouts: the in-flight bucket can only give back what it holds.
            writes.append(Update({"_id": doc_id, "balance": {"$gte": -delta}}, update, guard=BUCKET))
        elif delta < 0 and bucket is None:
            # Second guard behind the domain rule: never take a user wallet below zero.
            floor = -delta - allowed_debt.get(doc_id, 0)
            writes.append(Update({"_id": doc_id, "balance": {"$gte": floor}}, update, guard=FLOOR))
        elif bucket is not None:
            update["$setOnInsert"] = {"system": bucket[0], "partition": bucket[1],
                                      "status": WalletStatus.ACTIVE, "createdAt": now}
            writes.append(Update({"_id": doc_id}, update, upsert=True))
        else:
            writes.append(Update({"_id": doc_id}, update))
    return writes


def actor(job: Mapping[str, Any]) -> dict[str, str]:
    """Who stands behind the job: its operation class's ``actor``, and the owner's id."""
    # .get: a poison job may lack its type, and failing it must not raise again.
    cls = OPERATION_TYPES.get(job.get("type"))  # type: ignore[arg-type]
    return {"type": cls.actor if cls is not None else Actor.USER, "id": job.get("ownerId") or "system"}


def audit_record(job: Mapping[str, Any], outcome: Outcome, router: Router) -> dict[str, Any]:
    """One job's line in its batch's audit block: who, what, and the balances it moved."""
    record: dict[str, Any] = {
        "jobId": job["_id"],
        "type": job.get("type"),
        "outcome": JobStatus.SETTLED if outcome.ok else JobStatus.FAILED,
        "actor": actor(job),
        "requestId": job.get("requestId"),
    }
    if isinstance(outcome, Settled):
        record["entries"] = [{"walletId": e.wallet_id, "amount": e.amount} for e in outcome.entries]
        # Before/after only for balances this partition owns; a foreign wallet's
        # share is a deferred credit, recorded in the owner's block when applied.
        record["balances"] = [{"walletId": w, "before": b, "after": a}
                              for w, (b, a) in sorted(outcome.balances.items()) if router.is_local(w)]
    elif isinstance(outcome, Failed):
        record["code"] = outcome.code
    reason = (job.get("params") or {}).get("reason")
    if reason:  # refunds, chargebacks and admin credits say why
        record["reason"] = reason
    return record
