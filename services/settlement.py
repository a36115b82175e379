"""Settle the queued jobs of one partition: batched, exactly once, in order.

One batch = one MongoDB transaction that reads the partition's inbound credits, its
queued jobs and the state they touch, asks :func:`ledger.decide.decide_batch`, and
writes every effect: ledger transactions, merged increments of the wallets this
partition owns (``ledger.routing``: single writer per balance, system wallets as
per-partition buckets), insert-only credits for wallets other partitions own, the
inbound credits marked applied, entitlements, subscription changes, ONE hash-chained
audit block listing the batch's jobs, job outcomes and the partition's sequence.

Exactly once: a job leaves ``queued`` only in the transaction that applies its
effects, and that transaction read it as ``queued`` (snapshot isolation turns a
concurrent change into a write conflict). Two settlers of the same partition both
bump ``partitions.<p>.seq`` under a ``seq`` guard and so conflict; the loser retries
and finds the jobs already done. ``transactions.jobId`` is unique as a last line.
A redelivered doorbell therefore finds nothing to do.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import DeleteOne, InsertOne, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from ledger import audit
from ledger.decide import (
    INTERNAL_ERROR,
    ContentInfo,
    EndSubscription,
    ExpireSubscription,
    ExtendSubscription,
    Failed,
    GrantUnlock,
    HoldPayout,
    MovePayout,
    Original,
    Outcome,
    PayoutState,
    Plan,
    Reversal,
    RevokeUnlock,
    Settled,
    Snapshot,
    StartSubscription,
    SubscriptionState,
    WalletState,
    decide_batch,
    failed,
)
from ledger.money import SYSTEM_WALLETS, bucket_may_go_negative, is_system_wallet
from ledger.operations import OPERATION_TYPES, Operation, Reads, from_params
from ledger.routing import Router, merge_credits, parse_bucket, route
from ledger.states import ACTIVE, PayoutStatus, SubscriptionStatus, WalletStatus
from ledger.timeutil import utcnow
from services.jobs import FAILED, QUEUED, SETTLED

log = logging.getLogger("purser.settlement")

Clock = Callable[[], datetime]
MAX_CONFLICT_RETRIES = 50
# Inbound credit documents applied per batch: bounds the transaction, not correctness
# (the rest are applied by the next batch, which the drain loop runs at once).
CREDIT_BATCH_MAX = 500


class _Conflict(Exception):
    """Another writer changed what this batch read: abort and decide again."""


class PoisonJob(Exception):
    """A job whose parameters cannot be turned into an operation."""


class PersistentDuplicate(Exception):
    """A unique index keeps refusing a batch's write while no one else settles the partition.

    A duplicate key from a concurrent settler of the partition moves its ``seq`` and
    disappears once the batch is decided again. One that recurs with the ``seq``
    unchanged comes from a job itself (e.g. a second top-up for an already settled
    ``providerTxId`` after its idempotency key expired): the batch is then isolated
    and that job failed. Deliberately not a ``PyMongoError``, which is retried forever.
    """


DUPLICATE_RETRIES = 3


@dataclass
class BatchResult:
    settled: int = 0
    failed: int = 0
    outcomes: list[tuple[dict[str, Any], Outcome]] = field(default_factory=list)
    retries: int = 0
    duration: float = 0.0
    credits_applied: int = 0  # inbound credit documents applied by this batch
    documents: int = 0  # documents written by the committed attempt
    credit_targets: set[int] = field(default_factory=set)  # partitions owed a doorbell
    stages: dict[str, float] = field(default_factory=dict)  # read / decide / write seconds

    @property
    def size(self) -> int:
        return self.settled + self.failed


@dataclass
class DrainResult:
    batches: list[BatchResult] = field(default_factory=list)
    more: bool = False  # stopped on the time budget with jobs possibly left

    @property
    def settled(self) -> int:
        return sum(b.settled for b in self.batches)

    @property
    def failed(self) -> int:
        return sum(b.failed for b in self.batches)


def ensure_partition(db: Database, partition: int) -> None:
    """Create the partition's head document once (a read when it exists).

    The partition's system-wallet buckets are created by the migration and, for a
    partition added later, upserted by its own first batch (their only writer).
    """
    if db.partitions.find_one({"_id": partition}, {"_id": 1}) is None:
        db.partitions.update_one(
            {"_id": partition},
            {"$setOnInsert": {"seq": 0, "auditSeq": 0, "auditHead": audit.GENESIS}},
            upsert=True,
        )


def _queued(db: Database, partition: int, limit: int, session: ClientSession | None) -> list[dict]:
    cursor = (
        db.jobs.find({"partition": partition, "status": QUEUED}, session=session)
        .sort([("createdAt", 1), ("_id", 1)])
        .limit(limit)
    )
    return list(cursor)


def _inbound(db: Database, partition: int, session: ClientSession | None) -> list[dict]:
    """Deferred credits addressed to ``partition`` and not applied yet, oldest first."""
    return list(db.credits.find({"to": partition, "applied": False}, session=session)
                .sort([("createdAt", 1), ("_id", 1)]).limit(CREDIT_BATCH_MAX))


def has_queued(db: Database, partition: int) -> bool:
    return db.jobs.find_one({"partition": partition, "status": QUEUED}, {"_id": 1}) is not None


def _operation(job: dict[str, Any]) -> Operation:
    try:
        return from_params(job["type"], job["params"])
    except Exception as exc:  # noqa: BLE001 - any malformed job is poison
        raise PoisonJob(f"job {job['_id']}: {exc}") from exc


def credit_amounts(credit: dict[str, Any]) -> dict[str, int]:
    """A deferred credit document's amounts per wallet."""
    return {row["walletId"]: row["amount"] for row in credit["amounts"]}


def load_snapshot(db: Database, ops: Sequence[Operation], router: Router,
                  session: ClientSession | None = None, extra_wallets: Sequence[str] = ()) -> Snapshot:
    """Read exactly the state that ``ops`` can touch (each operation declares its reads).

    System wallets appear under their own names with this partition's bucket
    balance. Wallets owned by other partitions are read for their status only (a
    receiver must exist and not be frozen); their balance is never written here.
    """
    reads = Reads(wallets=set(extra_wallets))
    for op in ops:
        reads.update(op.reads())

    snap = Snapshot()
    if reads.contents:
        for doc in db.contents.find({"_id": {"$in": sorted(reads.contents)}}, session=session):
            snap.contents[doc["_id"]] = ContentInfo(doc["_id"], doc["creatorId"], doc["price"],
                                                    bool(doc.get("isActive", True)))
            reads.wallets.add(doc["creatorId"])
    if reads.unlocks:
        # One index range on the leading field; two $in fields at once are answered
        # with a collection scan by some planners (SecantusDB's among them).
        for doc in db.unlocks.find({"userId": {"$in": sorted({u for u, _ in reads.unlocks})}},
                                   {"userId": 1, "contentId": 1}, session=session):
            if (doc["userId"], doc["contentId"]) in reads.unlocks:
                snap.unlocks.add((doc["userId"], doc["contentId"]))

    _load_reversible(db, reads, snap, session)
    if reads.payouts:
        for doc in db.payouts.find({"_id": {"$in": sorted(reads.payouts)}}, session=session):
            snap.payouts[doc["_id"]] = PayoutState(doc["_id"], doc["userId"], doc["amount"], doc["status"])

    sub_docs: list[dict[str, Any]] = []
    if reads.subscriptions:
        sub_docs += db.subscriptions.find({"_id": {"$in": sorted(reads.subscriptions)}}, session=session)
    if reads.subscriber_pairs:
        # The subscribers' subscriptions by the index's leading field, narrowed here.
        creators = {c for _, c in reads.subscriber_pairs}
        sub_docs += [doc for doc in db.subscriptions.find(
            {"subscriberId": {"$in": sorted({s for s, _ in reads.subscriber_pairs})}}, session=session)
            if doc["status"] == SubscriptionStatus.ACTIVE and doc["creatorId"] in creators]
    for doc in sub_docs:
        snap.subscriptions[doc["_id"]] = SubscriptionState(
            doc["_id"], doc["subscriberId"], doc["creatorId"], doc["price"], doc["periodDays"],
            doc["status"], bool(doc.get("autoRenew")), doc["expiresAt"], doc.get("renewals", 0))
    for sub in snap.subscriptions.values():
        reads.plans.add(sub.creator_id)
        reads.wallets.add(sub.creator_id)

    if reads.plans:
        for doc in db.plans.find({"_id": {"$in": sorted(reads.plans)}}, session=session):
            snap.plans[doc["_id"]] = Plan(doc["_id"], doc["price"], doc["periodDays"],
                                          bool(doc.get("isActive", True)))

    user_ids = sorted(w for w in reads.wallets if not is_system_wallet(w))
    buckets = {router.doc_id(w): w for w in SYSTEM_WALLETS}
    for doc in db.wallets.find({"_id": {"$in": user_ids + sorted(buckets)}}, {"balance": 1, "status": 1},
                               session=session):
        name = buckets.get(doc["_id"], doc["_id"])
        snap.wallets[name] = WalletState(doc["balance"], doc.get("status", ACTIVE))
    for name in SYSTEM_WALLETS:
        snap.wallets.setdefault(name, WalletState(0))  # a bucket its first batch creates
    return snap


def _load_reversible(db: Database, reads: Reads, snap: Snapshot, session: ClientSession | None) -> None:
    """Originals being refunded (by job id) and top-ups being charged back (by provider id),
    with what earlier refunds or chargebacks already took back from each leg."""
    txs: list[dict[str, Any]] = []
    if reads.originals:
        txs += db.transactions.find({"_id": {"$in": sorted(reads.originals)}}, session=session)
    if reads.topups:
        txs += db.transactions.find({"providerTxId": {"$in": sorted(reads.topups)}}, session=session)
    if not txs:
        return
    ids = sorted({tx["_id"] for tx in txs})
    results = {j["_id"]: j.get("result") or {} for j in db.jobs.find({"_id": {"$in": ids}}, {"result": 1},
                                                                        session=session)}
    reversed_: dict[str, dict[str, int]] = {}
    for prior in db.transactions.find({"refundOf": {"$in": ids}}, {"refundOf": 1, "refundLegs": 1},
                                      session=session):
        legs = reversed_.setdefault(prior["refundOf"], {})
        for row in prior.get("refundLegs", []):
            legs[row["walletId"]] = legs.get(row["walletId"], 0) + row["amount"]
    for tx in txs:
        payer = next((e["walletId"] for e in tx["entries"] if e["amount"] < 0), "")
        legs = tuple((e["walletId"], e["amount"]) for e in tx["entries"] if e["amount"] > 0)
        original = Original(tx["_id"], tx["type"], payer, legs, results.get(tx["_id"], {}),
                            dict(reversed_.get(tx["_id"], {})))
        if tx["type"] == "topup" and tx.get("providerTxId") in reads.topups:
            snap.topups[tx["providerTxId"]] = original
        if tx["_id"] in reads.originals:
            snap.originals[tx["_id"]] = original
            sub_id = original.result.get("subscriptionId")
            if sub_id and original.kind in ("subscribe", "renew"):
                reads.subscriptions.add(sub_id)


def _actor(job: dict[str, Any]) -> dict[str, str]:
    owner = job.get("ownerId") or "system"
    # .get: a poison job may lack its type, and failing it must not raise again.
    kind = {"topup": "provider", "chargeback": "provider", "payout_event": "provider", "renew": "system",
            "credit": "admin", "refund": "admin"}.get(job.get("type"), "user")
    return {"type": kind, "id": owner}


def _audit_record(job: dict[str, Any], outcome: Outcome, router: Router) -> dict[str, Any]:
    """One job's line in its batch's audit block: who, what, and the balances it moved."""
    record: dict[str, Any] = {
        "jobId": job["_id"],
        "type": job.get("type"),
        "outcome": SETTLED if outcome.ok else FAILED,
        "actor": _actor(job),
        "requestId": job.get("requestId"),
    }
    if isinstance(outcome, Settled):
        record["entries"] = [{"walletId": e.wallet_id, "amount": e.amount} for e in outcome.entries]
        # Before/after only for balances this partition owns; a foreign wallet's
        # share is a deferred credit, recorded in the owner's block when applied.
        record["balances"] = [{"walletId": w, "before": b, "after": a}
                              for w, (b, a) in sorted(outcome.balances.items()) if router.is_local(w)]
    else:
        record["code"] = outcome.code
    reason = (job.get("params") or {}).get("reason")
    if reason:  # refunds, chargebacks and admin credits say why
        record["reason"] = reason
    return record


def _effect_writes(outcome: Outcome, job: dict[str, Any], now: datetime) -> dict[str, list]:
    writes: dict[str, list] = {"unlocks": [], "subscriptions": [], "payouts": []}
    for effect in outcome.effects:
        if isinstance(effect, GrantUnlock):
            writes["unlocks"].append(InsertOne({
                "userId": effect.user_id, "contentId": effect.content_id, "creatorId": effect.creator_id,
                "price": effect.price, "jobId": job["_id"], "createdAt": now}))
        elif isinstance(effect, StartSubscription):
            writes["subscriptions"].append(InsertOne({
                "_id": effect.subscription_id, "subscriberId": effect.subscriber_id,
                "creatorId": effect.creator_id, "price": effect.price, "periodDays": effect.period_days,
                "status": SubscriptionStatus.ACTIVE, "autoRenew": effect.auto_renew,
                "startedAt": effect.started_at, "expiresAt": effect.expires_at, "renewals": 0,
                "jobId": job["_id"], "createdAt": now}))
        elif isinstance(effect, ExtendSubscription):
            writes["subscriptions"].append(UpdateOne(
                {"_id": effect.subscription_id, "status": SubscriptionStatus.ACTIVE,
                 "expiresAt": effect.old_expires_at},
                {"$set": {"expiresAt": effect.new_expires_at, "lastRenewedAt": now},
                 "$inc": {"renewals": 1}}))
        elif isinstance(effect, HoldPayout):
            writes["payouts"].append(InsertOne({
                "_id": effect.payout_id, "userId": effect.user_id, "amount": effect.amount,
                "status": PayoutStatus.PENDING, "partition": job.get("partition"), "jobId": job["_id"],
                "createdAt": now, "updatedAt": now, "events": []}))
        elif isinstance(effect, MovePayout):
            writes["payouts"].append(UpdateOne(
                {"_id": effect.payout_id, "status": effect.old_status},
                {"$set": {"status": effect.new_status, "updatedAt": now},
                 "$push": {"events": {"eventId": effect.event_id, "status": effect.new_status,
                                      "jobId": job["_id"], "at": now}}}))
        elif isinstance(effect, RevokeUnlock):
            writes["unlocks"].append(DeleteOne({"userId": effect.user_id, "contentId": effect.content_id}))
        elif isinstance(effect, EndSubscription):
            writes["subscriptions"].append(UpdateOne(
                {"_id": effect.subscription_id, "status": SubscriptionStatus.ACTIVE},
                {"$set": {"status": SubscriptionStatus.EXPIRED, "endedReason": effect.reason, "endedAt": now}}))
        elif isinstance(effect, ExpireSubscription):
            writes["subscriptions"].append(UpdateOne(
                {"_id": effect.subscription_id, "status": SubscriptionStatus.ACTIVE},
                {"$set": {"status": SubscriptionStatus.EXPIRED, "endedReason": effect.reason, "endedAt": now}}))
    return writes


def _job_update(job: dict[str, Any], outcome: Outcome, now: datetime, pointer: dict[str, int]) -> UpdateOne:
    if isinstance(outcome, Settled):
        fields = {"status": SETTLED, "settledAt": now, "result": outcome.result, "error": None}
    else:
        fields = {"status": FAILED, "settledAt": now, "result": None,
                  "error": {"code": outcome.code, "message": outcome.message}}
    fields["audit"] = pointer  # the audit block that lists this job
    # Filtered on _id alone on purpose: the job was read as queued inside this same
    # transaction, so a concurrent change to it is a WriteConflict (snapshot isolation),
    # and every status change also moves the partition's seq under a guard. An extra
    # ``status`` predicate would add nothing but costs the embedded store its _id
    # point-lookup fast path: 0.8 instead of 1.35 ms per job (docs/performance.md).
    return UpdateOne({"_id": job["_id"]}, {"$set": fields, "$inc": {"attempts": 1}})


def _bulk(db: Database, name: str, ops: list, session: ClientSession) -> int:
    if not ops:
        return 0
    res = db[name].bulk_write(ops, ordered=True, session=session)
    expected_updates = sum(1 for op in ops if isinstance(op, UpdateOne))
    if res.matched_count + res.upserted_count != expected_updates:
        raise _Conflict(f"{name}: {res.matched_count} of {expected_updates} conditional updates matched")
    return len(ops)


def _parties(entries: Sequence[Any]) -> list[str]:
    """The user wallets of a transaction: what its owner's history is looked up by."""
    return sorted({e.wallet_id for e in entries if not is_system_wallet(e.wallet_id)})


@dataclass
class _Plan:
    """Everything one batch writes, built before the first write."""

    jobs: list[InsertOne | UpdateOne] = field(default_factory=list)
    transactions: list[InsertOne] = field(default_factory=list)
    unlocks: list = field(default_factory=list)
    subscriptions: list = field(default_factory=list)
    payouts: list = field(default_factory=list)
    credits: list[InsertOne | UpdateOne] = field(default_factory=list)
    wallets: list[UpdateOne] = field(default_factory=list)
    targets: set[int] = field(default_factory=set)


def _write_batch(
    db: Database,
    router: Router,
    jobs: list[dict[str, Any]],
    outcomes: list[Outcome],
    deltas: dict[str, int],
    inbound: list[dict[str, Any]],
    part_doc: dict[str, Any],
    now: datetime,
    session: ClientSession,
) -> tuple[int, set[int]]:
    """Write one decided batch; return (documents written, partitions owed a doorbell).

    Every document written here has this partition as its only writer: its jobs,
    their ledger records, its audit block and head, its own wallets and buckets,
    and the credits addressed to it (marked applied). Credits for wallets owned by
    other partitions are inserted, never updated, so they cannot conflict either.
    """
    partition = router.partition
    batch_seq = part_doc["seq"] + 1
    block_seq = part_doc["auditSeq"] + 1
    pointer = {"partition": partition, "seq": block_seq}
    plan = _Plan()
    records = []
    for job, outcome in zip(jobs, outcomes, strict=True):
        if isinstance(outcome, Settled):
            tx = {"_id": job["_id"], "txId": job["_id"], "jobId": job["_id"], "type": job["type"],
                  "ownerId": job.get("ownerId"), "partition": partition, "auditSeq": block_seq,
                  "entries": [{"walletId": e.wallet_id, "amount": e.amount} for e in outcome.entries],
                  "parties": _parties(outcome.entries), "requestId": job.get("requestId"), "createdAt": now}
            if "providerTxId" in outcome.result and job["type"] == "topup":
                tx["providerTxId"] = outcome.result["providerTxId"]
            for effect in outcome.effects:
                if isinstance(effect, Reversal):  # a refund or chargeback names its original
                    tx["refundOf"] = effect.original_job_id
                    tx["refundLegs"] = [{"walletId": w, "amount": a} for w, a in effect.legs]
                    tx["reason"] = effect.reason
            plan.transactions.append(InsertOne(tx))
        records.append(_audit_record(job, outcome, router))
        effects = _effect_writes(outcome, job, now)
        plan.unlocks += effects["unlocks"]
        plan.subscriptions += effects["subscriptions"]
        plan.payouts += effects["payouts"]
        plan.jobs.append(_job_update(job, outcome, now, pointer))

    routed = route(deltas, router)
    applied = merge_credits(credit_amounts(c) for c in inbound)
    for credit in inbound:
        plan.credits.append(UpdateOne({"_id": credit["_id"], "applied": False},
                                      {"$set": {"applied": True, "appliedAt": now, "appliedIn": batch_seq}}))
    credits_out = []
    for target, amounts in sorted(routed.deferred.items()):
        credit_id = f"{partition}:{batch_seq}:{target}"
        rows = [{"walletId": w, "amount": a} for w, a in sorted(amounts.items())]
        plan.credits.append(InsertOne({"_id": credit_id, "to": target, "from": partition, "batch": batch_seq,
                                       "amounts": rows, "applied": False, "createdAt": now}))
        credits_out.append({"creditId": credit_id, "to": target, "amounts": rows})
        plan.targets.add(target)

    block = {"partition": partition, "seq": block_seq, "batch": batch_seq, "createdAt": now, "jobs": records,
             "creditsIn": [{"creditId": c["_id"], "from": c["from"], "amounts": c["amounts"]} for c in inbound],
             "creditsOut": credits_out}
    block = audit.seal(block, part_doc["auditHead"])

    # What the batch may take below zero: provider chargebacks only (debt), per wallet.
    overdraw: dict[str, int] = {}
    for outcome in outcomes:
        if isinstance(outcome, Settled) and getattr(OPERATION_TYPES.get(outcome.kind), "may_overdraw", False):
            for e in outcome.entries:
                if e.amount < 0 and not is_system_wallet(e.wallet_id):
                    overdraw[e.wallet_id] = overdraw.get(e.wallet_id, 0) - e.amount
    local = dict(routed.local)
    for wallet_id, amount in applied.items():
        if not router.is_local(wallet_id):
            raise _Conflict(f"credit for {wallet_id} addressed to partition {partition}")
        local[wallet_id] = local.get(wallet_id, 0) + amount
    for doc_id, delta in sorted(local.items()):
        if not delta:
            continue
        update: dict[str, Any] = {"$inc": {"balance": delta, "version": 1}, "$set": {"lastTransactionAt": now}}
        bucket = parse_bucket(doc_id)
        if delta < 0 and bucket is not None and not bucket_may_go_negative(bucket[0]):
            # Held payouts: the in-flight bucket can only give back what it holds.
            plan.wallets.append(UpdateOne({"_id": doc_id, "balance": {"$gte": -delta}}, update))
        elif delta < 0 and bucket is None:
            # Second guard behind the domain rule: never take a user wallet below zero.
            floor = -delta - overdraw.get(doc_id, 0)
            plan.wallets.append(UpdateOne({"_id": doc_id, "balance": {"$gte": floor}}, update))
        elif bucket is not None:
            update["$setOnInsert"] = {"system": bucket[0], "partition": bucket[1],
                                      "status": WalletStatus.ACTIVE, "createdAt": now}
            plan.wallets.append(UpdateOne({"_id": doc_id}, update, upsert=True))
        else:
            plan.wallets.append(UpdateOne({"_id": doc_id}, update))

    written = 0
    written += _bulk(db, "jobs", plan.jobs, session)
    written += _bulk(db, "transactions", plan.transactions, session)
    written += _bulk(db, "unlocks", plan.unlocks, session)
    written += _bulk(db, "subscriptions", plan.subscriptions, session)
    written += _bulk(db, "payouts", plan.payouts, session)
    written += _bulk(db, "credits", plan.credits, session)
    db.auditlogs.insert_one(block, session=session)
    res = db.partitions.update_one(
        {"_id": partition, "seq": part_doc["seq"]},
        {"$set": {"auditSeq": block_seq, "auditHead": block["hash"], "lastSettledAt": now}, "$inc": {"seq": 1}},
        session=session,
    )
    if res.matched_count != 1:
        raise _Conflict("partition sequence moved")
    written += 2 + _bulk(db, "wallets", plan.wallets, session)
    return written, plan.targets


class _Deadline(Exception):
    """The batch kept conflicting until the drain's time budget ran out: try again later."""


def _run_batch(
    db: Database, router: Router, limit: int, clock: Clock, only: str | None,
    deadline: float | None = None,
) -> BatchResult:
    """Decide and write one batch in one transaction, retrying on conflicts."""
    partition = router.partition
    client = db.client
    started = time.perf_counter()
    result = BatchResult()
    attempt = 0
    duplicates = 0
    calls = 0  # every run of the callback, including with_transaction's own transient retries
    while True:
        attempt += 1
        holder: dict[str, Any] = {}

        def body(session: ClientSession, holder: dict[str, Any] = holder) -> None:
            nonlocal calls
            calls += 1
            holder.clear()
            t0 = time.perf_counter()
            if only is not None:
                jobs = list(db.jobs.find({"_id": only, "status": QUEUED}, session=session))
                inbound: list[dict[str, Any]] = []
            else:
                jobs = _queued(db, partition, limit, session)
                inbound = _inbound(db, partition, session)
            if not jobs and not inbound:
                return
            part_doc = db.partitions.find_one({"_id": partition}, session=session)
            if part_doc is None:
                raise _Conflict("partition document missing")
            holder["seq"] = part_doc["seq"]
            ops = [(job["_id"], _operation(job)) for job in jobs]
            credited = merge_credits(credit_amounts(c) for c in inbound)
            snapshot = load_snapshot(db, [op for _, op in ops], router, session, sorted(credited))
            for wallet_id, amount in credited.items():
                # Credits are applied before this batch's own jobs are decided: they are spendable now.
                snapshot.wallets.setdefault(wallet_id, WalletState(0)).balance += amount
            t1 = time.perf_counter()
            now = clock()
            decision = decide_batch(ops, snapshot, now)
            t2 = time.perf_counter()
            written, targets = _write_batch(db, router, jobs, decision.outcomes, decision.deltas, inbound,
                                            part_doc, now, session)
            holder.update(jobs=jobs, outcomes=decision.outcomes, written=written, targets=targets,
                          credits=len(inbound), stages={"read": t1 - t0, "decide": t2 - t1,
                                                        "write": time.perf_counter() - t2})

        try:
            with client.start_session() as session:
                session.with_transaction(body)
            break
        except _Conflict as exc:
            if attempt >= MAX_CONFLICT_RETRIES:
                raise
            log.debug("settle conflict, retrying", extra={"partition": partition, "reason": str(exc)})
        except OperationFailure as exc:
            # A duplicate key or write conflict surfacing as a plain error means another
            # settler committed first; deciding again finds the jobs already done.
            if not (_is_conflict(exc) and attempt < MAX_CONFLICT_RETRIES):
                raise
            if _is_duplicate(exc) and _partition_unchanged(db, partition, holder.get("seq")):
                # No other settler committed in this partition since this attempt
                # read it: the batch collides with itself or with settled history.
                duplicates += 1
                if duplicates >= DUPLICATE_RETRIES:
                    raise PersistentDuplicate(str(exc)) from exc
        if deadline is not None and time.monotonic() > deadline:
            # Bounded: a batch that keeps conflicting must not outlive the task's limits.
            raise _Deadline(f"partition {partition}: still conflicting after {attempt} attempts")
        time.sleep(min(0.002 * attempt, 0.05) * (1 + random.random()))

    # Every re-run of the callback is a retry: this loop's own and those with_transaction
    # makes itself on a WriteConflict, which never reach this loop (contention stays visible).
    result.retries = calls - 1
    for job, outcome in zip(holder.get("jobs", []), holder.get("outcomes", []), strict=True):
        result.outcomes.append((job, outcome))
        if outcome.ok:
            result.settled += 1
        else:
            result.failed += 1
    result.credits_applied = holder.get("credits", 0)
    result.documents = holder.get("written", 0)
    result.credit_targets = set(holder.get("targets", ()))
    result.stages = holder.get("stages", {})
    result.duration = time.perf_counter() - started
    return result


def fail_job(db: Database, router: Router, job: dict[str, Any], code: str, message: str,
             clock: Clock = utcnow) -> BatchResult:
    """Fail one job with an audit record, in a transaction, without touching balances."""
    partition = router.partition
    outcome: Failed = failed(job["_id"], job.get("type", "unknown"), code, message)
    for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
        try:
            with db.client.start_session() as session:
                def body(session: ClientSession) -> None:
                    part_doc = db.partitions.find_one({"_id": partition}, session=session)
                    current = db.jobs.find_one({"_id": job["_id"], "status": QUEUED}, session=session)
                    if current is None or part_doc is None:
                        raise _Gone
                    _write_batch(db, router, [current], [outcome], {}, [], part_doc, clock(), session)
                session.with_transaction(body)
            return BatchResult(failed=1, outcomes=[(job, outcome)])
        except _Gone:
            return BatchResult()
        except _Conflict:
            time.sleep(0.002 * attempt)
    raise RuntimeError(f"could not fail job {job['_id']}")


class _Gone(Exception):
    pass


def _error_codes(exc: OperationFailure) -> set[Any]:
    codes = {exc.code}
    if isinstance(exc, BulkWriteError):
        codes |= {err.get("code") for err in exc.details.get("writeErrors", [])}
    return codes


def _is_conflict(exc: OperationFailure) -> bool:
    return bool(_error_codes(exc) & {11000, 112, 251})


def _is_duplicate(exc: OperationFailure) -> bool:
    return 11000 in _error_codes(exc)


def _partition_unchanged(db: Database, partition: int, seq: int | None) -> bool:
    if seq is None:
        return False
    doc = db.partitions.find_one({"_id": partition}, {"seq": 1})
    return doc is not None and doc.get("seq") == seq


def settle_partition(
    db: Database,
    partition: int,
    *,
    partitions: int,
    batch_max: int,
    clock: Clock = utcnow,
    on_batch: Callable[[BatchResult], None] | None = None,
    time_budget: float | None = None,
    transient: tuple[type[BaseException], ...] = (),
) -> DrainResult:
    """Settle batches (inbound credits first) until the partition has nothing left.

    With ``time_budget`` (seconds) it stops between batches once the budget is
    spent and sets ``DrainResult.more``: the caller rings again instead of running
    into a hard time limit. ``transient`` names exceptions that say the *worker*
    is in trouble, not a job (Celery's ``SoftTimeLimitExceeded``): they propagate
    and never fail a job.
    """
    router = Router(partition, partitions)
    ensure_partition(db, partition)
    drained = DrainResult()
    deadline = None if time_budget is None else time.monotonic() + time_budget
    while True:
        if deadline is not None and time.monotonic() > deadline:
            drained.more = True
            break
        try:
            batch = _run_batch(db, router, batch_max, clock, None, deadline)
        except _Deadline:
            drained.more = True
            break
        except (PyMongoError, _Conflict, *transient):
            # Store trouble, contention or the worker's own limits: nothing of this batch
            # was applied. The task layer retries; the sweeper is the backstop.
            raise
        except Exception:  # noqa: BLE001 - a poison job must not block its partition
            log.exception("batch failed unexpectedly; isolating jobs one by one",
                          extra={"partition": partition})
            batch = _isolate(db, router, batch_max, clock, deadline, transient)
        if batch.size == 0 and batch.credits_applied == 0:
            break
        drained.batches.append(batch)
        if on_batch is not None:
            on_batch(batch)
    return drained


ISOLATION_ATTEMPTS = 2


def _isolate(db: Database, router: Router, batch_max: int, clock: Clock, deadline: float | None,
             transient: tuple[type[BaseException], ...]) -> BatchResult:
    """Retry a failing batch one job at a time; fail only a job that raises deterministically.

    A job is failed when settling it *alone* raises the same exception type on every
    one of ``ISOLATION_ATTEMPTS`` tries (or its parameters cannot be read at all).
    Store errors, conflicts, the time budget and ``transient`` exceptions say nothing
    about the job: they propagate or stop the isolation, and the job stays queued.
    """
    total = BatchResult()
    for job in _queued(db, router.partition, batch_max, None):
        if deadline is not None and time.monotonic() > deadline:
            break
        errors: list[type[BaseException]] = []
        one: BatchResult | None = None
        exc: Exception | None = None
        for _ in range(ISOLATION_ATTEMPTS):
            try:
                one = _run_batch(db, router, 1, clock, job["_id"], deadline)
                break
            except (PyMongoError, _Conflict, _Deadline, *transient):
                raise
            except PoisonJob as poison:
                exc, errors = poison, [PoisonJob] * ISOLATION_ATTEMPTS
                break
            except Exception as err:  # noqa: BLE001
                exc = err
                errors.append(type(err))
        if one is None:
            if len(errors) < ISOLATION_ATTEMPTS or len(set(errors)) != 1:
                continue  # not reproducible: leave it queued, the next ring tries again
            log.error("job failed with an unexpected error", exc_info=exc, extra={
                "partition": router.partition, "jobId": job["_id"], "requestId": job.get("requestId")})
            one = fail_job(db, router, job, INTERNAL_ERROR, f"{type(exc).__name__}", clock)
        total.settled += one.settled
        total.failed += one.failed
        total.outcomes += one.outcomes
        total.documents += one.documents
        total.credit_targets |= one.credit_targets
    return total
