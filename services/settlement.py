"""Settle the queued jobs of one partition: batched, exactly once, in order.

One batch = one MongoDB transaction that reads the queued jobs and the state they
touch, asks :func:`ledger.decide.decide_batch`, and writes every effect: ledger
transactions, merged wallet increments, entitlements, subscription changes, chained
audit entries, job outcomes and the partition's sequence number.

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

from pymongo import InsertOne, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from ledger import audit
from ledger.decide import (
    INTERNAL_ERROR,
    ContentInfo,
    ExpireSubscription,
    ExtendSubscription,
    Failed,
    GrantUnlock,
    Outcome,
    Plan,
    Settled,
    Snapshot,
    StartSubscription,
    SubscriptionState,
    WalletState,
    decide_batch,
    failed,
)
from ledger.money import SYSTEM_WALLETS
from ledger.operations import Gift, Operation, Renew, Subscribe, Transfer, Unlock, from_params
from ledger.timeutil import utcnow
from services.jobs import FAILED, QUEUED, SETTLED

log = logging.getLogger("purser.settlement")

Clock = Callable[[], datetime]
MAX_CONFLICT_RETRIES = 50


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


def has_queued(db: Database, partition: int) -> bool:
    return db.jobs.find_one({"partition": partition, "status": QUEUED}, {"_id": 1}) is not None


def _operation(job: dict[str, Any]) -> Operation:
    try:
        return from_params(job["type"], job["params"])
    except Exception as exc:  # noqa: BLE001 - any malformed job is poison
        raise PoisonJob(f"job {job['_id']}: {exc}") from exc


def load_snapshot(db: Database, ops: Sequence[Operation], session: ClientSession | None = None) -> Snapshot:
    """Read exactly the state that ``ops`` can touch."""
    wallet_ids: set[str] = set(SYSTEM_WALLETS)
    content_ids: set[str] = set()
    plan_creators: set[str] = set()
    sub_ids: set[str] = set()
    sub_pairs: set[tuple[str, str]] = set()
    for op in ops:
        wallet_ids.add(op.wallet)
        if isinstance(op, Transfer):
            wallet_ids.add(op.receiver)
        elif isinstance(op, Gift):
            wallet_ids.add(op.creator)
        elif isinstance(op, Unlock):
            content_ids.add(op.content_id)
        elif isinstance(op, Subscribe):
            wallet_ids.add(op.creator)
            plan_creators.add(op.creator)
            sub_pairs.add((op.subscriber, op.creator))
        elif isinstance(op, Renew):
            sub_ids.add(op.subscription_id)

    snap = Snapshot()
    if content_ids:
        for doc in db.contents.find({"_id": {"$in": sorted(content_ids)}}, session=session):
            snap.contents[doc["_id"]] = ContentInfo(doc["_id"], doc["creatorId"], doc["price"],
                                                    bool(doc.get("isActive", True)))
            wallet_ids.add(doc["creatorId"])
        pairs = {(op.user, op.content_id) for op in ops if isinstance(op, Unlock)}
        # One index range on the leading field; two $in fields at once are answered
        # with a collection scan by some planners (SecantusDB's among them).
        for doc in db.unlocks.find({"userId": {"$in": sorted({u for u, _ in pairs})}},
                                   {"userId": 1, "contentId": 1}, session=session):
            if (doc["userId"], doc["contentId"]) in pairs:
                snap.unlocks.add((doc["userId"], doc["contentId"]))

    sub_docs: list[dict[str, Any]] = []
    if sub_ids:
        sub_docs += db.subscriptions.find({"_id": {"$in": sorted(sub_ids)}}, session=session)
    if sub_pairs:
        # The subscribers' subscriptions by the index's leading field, narrowed here
        # (see the unlocks above: one $in per query keeps it an index range).
        creators = {c for _, c in sub_pairs}
        sub_docs += [doc for doc in db.subscriptions.find(
            {"subscriberId": {"$in": sorted({s for s, _ in sub_pairs})}}, session=session)
            if doc["status"] == "active" and doc["creatorId"] in creators]
    for doc in sub_docs:
            snap.subscriptions[doc["_id"]] = SubscriptionState(
                doc["_id"], doc["subscriberId"], doc["creatorId"], doc["price"], doc["periodDays"],
                doc["status"], bool(doc.get("autoRenew")), doc["expiresAt"], doc.get("renewals", 0))
    for sub in snap.subscriptions.values():
        plan_creators.add(sub.creator_id)
        wallet_ids.add(sub.creator_id)

    if plan_creators:
        for doc in db.plans.find({"_id": {"$in": sorted(plan_creators)}}, session=session):
            snap.plans[doc["_id"]] = Plan(doc["_id"], doc["price"], doc["periodDays"],
                                          bool(doc.get("isActive", True)))

    for doc in db.wallets.find({"_id": {"$in": sorted(wallet_ids)}}, {"balance": 1, "status": 1},
                               session=session):
        snap.wallets[doc["_id"]] = WalletState(doc["balance"], doc.get("status", "active"))
    return snap


def _actor(job: dict[str, Any]) -> dict[str, str]:
    owner = job.get("ownerId") or "system"
    # .get: a poison job may lack its type, and failing it must not raise again.
    kind = {"topup": "provider", "renew": "system"}.get(job.get("type"), "user")
    if job.get("type") == "credit":
        kind = "admin"
    return {"type": kind, "id": owner}


def _audit_body(job: dict[str, Any], outcome: Outcome, partition: int, seq: int, now: datetime) -> dict:
    body: dict[str, Any] = {
        "partition": partition,
        "seq": seq,
        "jobId": job["_id"],
        "type": job.get("type"),
        "outcome": SETTLED if outcome.ok else FAILED,
        "actor": _actor(job),
        "entity": {"type": "job", "id": job["_id"]},
        "requestId": job.get("requestId"),
        "createdAt": now,
    }
    if isinstance(outcome, Settled):
        body["txId"] = job["_id"]
        body["entries"] = [{"walletId": e.wallet_id, "amount": e.amount} for e in outcome.entries]
        body["balances"] = [{"walletId": w, "before": b, "after": a}
                            for w, (b, a) in sorted(outcome.balances.items())]
    else:
        body["txId"] = None
        body["code"] = outcome.code
    return body


def _effect_writes(outcome: Outcome, job: dict[str, Any], now: datetime) -> dict[str, list]:
    writes: dict[str, list] = {"unlocks": [], "subscriptions": []}
    for effect in outcome.effects:
        if isinstance(effect, GrantUnlock):
            writes["unlocks"].append(InsertOne({
                "userId": effect.user_id, "contentId": effect.content_id, "creatorId": effect.creator_id,
                "price": effect.price, "jobId": job["_id"], "createdAt": now}))
        elif isinstance(effect, StartSubscription):
            writes["subscriptions"].append(InsertOne({
                "_id": effect.subscription_id, "subscriberId": effect.subscriber_id,
                "creatorId": effect.creator_id, "price": effect.price, "periodDays": effect.period_days,
                "status": "active", "autoRenew": effect.auto_renew, "startedAt": effect.started_at,
                "expiresAt": effect.expires_at, "renewals": 0, "jobId": job["_id"], "createdAt": now}))
        elif isinstance(effect, ExtendSubscription):
            writes["subscriptions"].append(UpdateOne(
                {"_id": effect.subscription_id, "status": "active", "expiresAt": effect.old_expires_at},
                {"$set": {"expiresAt": effect.new_expires_at, "lastRenewedAt": now},
                 "$inc": {"renewals": 1}}))
        elif isinstance(effect, ExpireSubscription):
            writes["subscriptions"].append(UpdateOne(
                {"_id": effect.subscription_id, "status": "active"},
                {"$set": {"status": "expired", "endedReason": effect.reason, "endedAt": now}}))
    return writes


def _job_update(job: dict[str, Any], outcome: Outcome, now: datetime) -> UpdateOne:
    if isinstance(outcome, Settled):
        fields = {"status": SETTLED, "settledAt": now, "result": outcome.result, "error": None}
    else:
        fields = {"status": FAILED, "settledAt": now, "result": None,
                  "error": {"code": outcome.code, "message": outcome.message}}
    # Filtered on _id alone on purpose: the job was read as queued inside this same
    # transaction, so a concurrent change to it is a WriteConflict (snapshot isolation),
    # and every status change also moves the partition's seq under a guard. An extra
    # ``status`` predicate would add nothing but costs the embedded store its _id
    # point-lookup fast path: 0.8 instead of 1.35 ms per job (docs/performance.md).
    return UpdateOne({"_id": job["_id"]}, {"$set": fields, "$inc": {"attempts": 1}})


def _bulk(db: Database, name: str, ops: list, session: ClientSession) -> None:
    if not ops:
        return
    res = db[name].bulk_write(ops, ordered=True, session=session)
    expected_updates = sum(1 for op in ops if isinstance(op, UpdateOne))
    if res.matched_count != expected_updates:
        raise _Conflict(f"{name}: {res.matched_count} of {expected_updates} conditional updates matched")


def _write_batch(
    db: Database,
    partition: int,
    jobs: list[dict[str, Any]],
    outcomes: list[Outcome],
    deltas: dict[str, int],
    part_doc: dict[str, Any],
    now: datetime,
    session: ClientSession,
) -> None:
    tx_docs, audit_docs, job_updates = [], [], []
    unlocks: list = []
    subs: list = []
    seq, head = part_doc["auditSeq"], part_doc["auditHead"]
    for job, outcome in zip(jobs, outcomes, strict=True):
        if isinstance(outcome, Settled):
            tx = {"_id": job["_id"], "txId": job["_id"], "jobId": job["_id"], "type": job["type"],
                  "ownerId": job.get("ownerId"), "partition": partition,
                  "entries": [{"walletId": e.wallet_id, "amount": e.amount} for e in outcome.entries],
                  "requestId": job.get("requestId"), "createdAt": now}
            if "providerTxId" in outcome.result:
                tx["providerTxId"] = outcome.result["providerTxId"]
            tx_docs.append(InsertOne(tx))
        seq += 1
        entry = audit.seal(_audit_body(job, outcome, partition, seq, now), head)
        head = entry["hash"]
        audit_docs.append(InsertOne(entry))
        effects = _effect_writes(outcome, job, now)
        unlocks += effects["unlocks"]
        subs += effects["subscriptions"]
        job_updates.append(_job_update(job, outcome, now))

    # Partition-private documents first, shared hot wallets last: a write conflict
    # on a wallet credited by many partitions is detected as late as possible, so
    # the window in which two partitions collide stays short.
    _bulk(db, "jobs", job_updates, session)
    _bulk(db, "transactions", tx_docs, session)
    _bulk(db, "unlocks", unlocks, session)
    _bulk(db, "subscriptions", subs, session)
    _bulk(db, "auditlogs", audit_docs, session)
    res = db.partitions.update_one(
        {"_id": partition, "seq": part_doc["seq"]},
        {"$set": {"auditSeq": seq, "auditHead": head, "lastSettledAt": now}, "$inc": {"seq": 1}},
        session=session,
    )
    if res.matched_count != 1:
        raise _Conflict("partition sequence moved")
    debits, credits = [], []
    for wallet_id, delta in sorted(deltas.items()):
        update = {"$inc": {"balance": delta, "version": 1}, "$set": {"lastTransactionAt": now}}
        if delta < 0 and wallet_id not in SYSTEM_WALLETS:
            # Second guard behind the domain rule: never take a user wallet below zero.
            debits.append(UpdateOne({"_id": wallet_id, "balance": {"$gte": -delta}}, update))
        else:
            credits.append(UpdateOne({"_id": wallet_id}, update))
    _bulk(db, "wallets", debits, session)
    _bulk(db, "wallets", credits, session)


def _run_batch(
    db: Database, partition: int, limit: int, clock: Clock, only: str | None
) -> BatchResult:
    """Decide and write one batch in one transaction, retrying on conflicts."""
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
            if only is not None:
                jobs = list(db.jobs.find({"_id": only, "status": QUEUED}, session=session))
            else:
                jobs = _queued(db, partition, limit, session)
            if not jobs:
                return
            part_doc = db.partitions.find_one({"_id": partition}, session=session)
            if part_doc is None:
                raise _Conflict("partition document missing")
            holder["seq"] = part_doc["seq"]
            ops = [(job["_id"], _operation(job)) for job in jobs]
            now = clock()
            decision = decide_batch(ops, load_snapshot(db, [op for _, op in ops], session), now)
            _write_batch(db, partition, jobs, decision.outcomes, decision.deltas, part_doc, now, session)
            holder["jobs"] = jobs
            holder["outcomes"] = decision.outcomes

        try:
            with client.start_session() as session:
                session.with_transaction(body)
            break
        except _Conflict as exc:
            if attempt >= MAX_CONFLICT_RETRIES:
                raise
            log.debug("settle conflict, retrying", extra={"partition": partition, "reason": str(exc)})
            time.sleep(min(0.002 * attempt, 0.05) * (1 + random.random()))
        except OperationFailure as exc:
            # A duplicate key or write conflict surfacing as a plain error means another
            # settler committed first; deciding again finds the jobs already done.
            if _is_conflict(exc) and attempt < MAX_CONFLICT_RETRIES:
                if _is_duplicate(exc) and _partition_unchanged(db, partition, holder.get("seq")):
                    # No other settler committed in this partition since this attempt
                    # read it: the batch collides with itself or with settled history.
                    duplicates += 1
                    if duplicates >= DUPLICATE_RETRIES:
                        raise PersistentDuplicate(str(exc)) from exc
                time.sleep(min(0.002 * attempt, 0.05) * (1 + random.random()))
                continue
            raise

    # Every re-run of the callback is a retry: this loop's own and those with_transaction
    # makes itself on a WriteConflict, which never reach this loop (contention stays visible).
    result.retries = calls - 1
    for job, outcome in zip(holder.get("jobs", []), holder.get("outcomes", []), strict=True):
        result.outcomes.append((job, outcome))
        if outcome.ok:
            result.settled += 1
        else:
            result.failed += 1
    result.duration = time.perf_counter() - started
    return result


def fail_job(db: Database, partition: int, job: dict[str, Any], code: str, message: str,
             clock: Clock = utcnow) -> BatchResult:
    """Fail one job with an audit entry, in a transaction, without touching balances."""
    outcome: Failed = failed(job["_id"], job.get("type", "unknown"), code, message)
    for attempt in range(1, MAX_CONFLICT_RETRIES + 1):
        try:
            with db.client.start_session() as session:
                def body(session: ClientSession) -> None:
                    part_doc = db.partitions.find_one({"_id": partition}, session=session)
                    current = db.jobs.find_one({"_id": job["_id"], "status": QUEUED}, session=session)
                    if current is None or part_doc is None:
                        raise _Gone
                    _write_batch(db, partition, [current], [outcome], {}, part_doc, clock(), session)
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
    batch_max: int,
    clock: Clock = utcnow,
    on_batch: Callable[[BatchResult], None] | None = None,
    time_budget: float | None = None,
) -> DrainResult:
    """Settle batches until the partition has no queued job left.

    With ``time_budget`` (seconds) it stops between batches once the budget is
    spent and sets ``DrainResult.more``: the caller rings again instead of running
    into a hard time limit, which would otherwise look like a poison job.
    """
    ensure_partition(db, partition)
    drained = DrainResult()
    deadline = None if time_budget is None else time.monotonic() + time_budget
    while True:
        if deadline is not None and time.monotonic() > deadline:
            drained.more = True
            break
        try:
            batch = _run_batch(db, partition, batch_max, clock, None)
        except (PyMongoError, _Conflict):
            # Store trouble (unreachable, too many conflicts): nothing of this batch
            # was applied. The task layer retries; the sweeper is the backstop.
            raise
        except Exception:  # noqa: BLE001 - a poison job must not block its partition
            log.exception("batch failed unexpectedly; isolating jobs one by one",
                          extra={"partition": partition})
            batch = _isolate(db, partition, batch_max, clock)
        if batch.size == 0:
            break
        drained.batches.append(batch)
        if on_batch is not None:
            on_batch(batch)
    return drained


def _isolate(db: Database, partition: int, batch_max: int, clock: Clock) -> BatchResult:
    """Retry a failing batch one job at a time; a job that still raises is failed."""
    total = BatchResult()
    for job in _queued(db, partition, batch_max, None):
        try:
            one = _run_batch(db, partition, 1, clock, job["_id"])
        except (PyMongoError, _Conflict):
            # Store trouble or contention is not the job's fault: never fail it for that.
            raise
        except Exception as exc:  # noqa: BLE001
            log.exception("job failed with an unexpected error", extra={
                "partition": partition, "jobId": job["_id"], "requestId": job.get("requestId")})
            one = fail_job(db, partition, job, INTERNAL_ERROR, f"{type(exc).__name__}", clock)
        total.settled += one.settled
        total.failed += one.failed
        total.outcomes += one.outcomes
    return total
