"""Load and accounting for the concurrency, chaos and security suites.

Everything here talks to real processes: users are seeded (tests/support/seeding.py),
but every money request goes over HTTP to gunicorn, and every balance
comes out of a Celery worker's settlement.

The accounting is the point: :class:`Tally` remembers every job a client was told
was accepted (202) with what it knows about it (who pays, who receives), reads
back what the API tells the client about each job, and recomputes every wallet
from those answers alone. The database must agree coin for coin.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pymongo.database import Database

from ledger.money import EXTERNAL_FUNDING, PLATFORM_PROCESSING, PLATFORM_REVENUE
from services import journal
from tests.support.client import ApiClient, Response
from tests.support.seeding import User

TERMINAL = ("settled", "failed")
SPLIT_TYPES = ("unlock", "gift", "subscribe", "renew")


# ------------------------------------------------------------------------------ load


def fire(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 48) -> list[Any]:
    """Call ``fn`` on every item from ``workers`` threads released at the same instant."""
    items = list(items)
    if not items:
        return []
    start = threading.Event()

    def run(item: Any) -> Any:
        start.wait()
        return fn(item)

    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(run, item) for item in items]
        start.set()
        return [f.result() for f in futures]


# ------------------------------------------------------------------------------ accounting


@dataclass
class Sent:
    """One money request as the client knows it."""

    kind: str  # job type: topup, transfer, unlock, gift, subscribe
    payer: str  # the user whose wallet pays (for a top-up: the credited user)
    key: str
    reply: Response
    receiver: str | None = None  # a transfer's receiver (from the request)

    @property
    def accepted(self) -> bool:
        return self.reply.status == 202 and bool(self.reply.json and self.reply.json.get("jobId"))

    @property
    def job_id(self) -> str | None:
        return self.reply.json["jobId"] if self.accepted else None


@dataclass
class Tally:
    """Every accepted job the clients were told about, and what they were told at the end."""

    jobs: dict[str, Sent] = field(default_factory=dict)
    refused: Counter = field(default_factory=Counter)  # (kind, status, code) of non-202 answers
    told: dict[str, dict[str, Any]] = field(default_factory=dict)  # job id -> final job view
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sent: Sent) -> Sent:
        with self._lock:
            if sent.accepted:
                previous = self.jobs.get(sent.job_id)
                # One key, one job: a replay must name the job the first answer named.
                assert previous is None or previous.key == sent.key, (previous, sent)
                self.jobs[sent.job_id] = sent
            else:
                body = sent.reply.json or {}
                self.refused[(sent.kind, sent.reply.status, body.get("code") or sent.reply.error)] += 1
        return sent

    @property
    def accepted_ids(self) -> set[str]:
        return set(self.jobs)

    def collect(self, http: ApiClient, users: dict[str, User], workers: int = 16) -> dict[str, dict[str, Any]]:
        """Ask the API, as each job's owner, for the final state of every accepted job."""
        by_owner: dict[str, set[str]] = {}
        for job_id, sent in self.jobs.items():
            by_owner.setdefault(sent.payer, set()).add(job_id)

        def owner_jobs(owner: str) -> dict[str, dict[str, Any]]:
            user = users[owner]
            wanted = by_owner[owner]
            found: dict[str, dict[str, Any]] = {}
            cursor = None
            for _ in range(100):
                path = "/api/jobs?limit=100" + (f"&cursor={cursor}" if cursor else "")
                r = http.request("GET", path, token=user.token)
                assert r.status == 200, r
                for item in r.json["items"]:
                    if item["jobId"] in wanted:
                        found[item["jobId"]] = item
                cursor = r.json["nextCursor"]
                if not cursor or len(found) == len(wanted):
                    break
            for job_id in wanted - set(found):  # not listed: ask for it directly
                r = http.job(user, job_id)
                assert r.status == 200, (job_id, r)
                found[job_id] = r.json
            return found

        for part in fire(owner_jobs, sorted(by_owner), workers=workers):
            self.told.update(part)
        return self.told

    def outcome_counts(self) -> Counter:
        return Counter(view["status"] for view in self.told.values())

    def codes(self) -> Counter:
        return Counter((view["error"] or {}).get("code") for view in self.told.values()
                       if view["status"] == "failed")

    def expected_balances(self) -> Counter:
        """Every wallet's balance recomputed from the settled results the API reported."""
        balances: Counter = Counter()
        for job_id, view in self.told.items():
            if view["status"] != "settled":
                continue
            sent = self.jobs[job_id]
            result = view["result"]
            amount = result["amount"]
            assert view["type"] == sent.kind, (view, sent)
            if sent.kind == "topup":
                balances[sent.payer] += amount
                balances[EXTERNAL_FUNDING] -= amount
            elif sent.kind == "transfer":
                assert result["receiverId"] == sent.receiver, (view, sent)
                balances[sent.payer] -= amount
                balances[sent.receiver] += amount
            elif sent.kind in SPLIT_TYPES:
                split = result["split"]
                assert sum(split.values()) == amount, view
                balances[sent.payer] -= amount
                balances[result["creatorId"]] += split["creator"]
                balances[PLATFORM_REVENUE] += split.get(PLATFORM_REVENUE, 0)
                balances[PLATFORM_PROCESSING] += split.get(PLATFORM_PROCESSING, 0)
            else:  # pragma: no cover - the suites send nothing else
                raise AssertionError(f"unexpected job type {sent.kind}")
        return balances


def assert_told_matches_store(db: Database, tally: Tally) -> None:
    """The final answers agree with the store, and every balance follows from them."""
    assert set(tally.told) == tally.accepted_ids, "some accepted job was never reported"
    not_terminal = [j for j, v in tally.told.items() if v["status"] not in TERMINAL]
    assert not not_terminal, f"{len(not_terminal)} accepted job(s) reported non-terminal: {not_terminal[:5]}"
    stored = {j["_id"]: j for j in db.jobs.find({"_id": {"$in": sorted(tally.accepted_ids)}},
                                                 {"status": 1, "result.amount": 1})}
    for job_id, view in tally.told.items():
        assert stored[job_id]["status"] == view["status"], (job_id, view, stored[job_id])
    expected = tally.expected_balances()
    actual: Counter = Counter()
    for w in db.wallets.find({}, {"balance": 1, "system": 1}):
        actual[w.get("system") or w["_id"]] += w["balance"]  # system buckets fold into their wallet
    for credit in db.credits.find({"applied": False}, {"amounts": 1}):
        for row in credit["amounts"]:
            actual[row["walletId"]] += row["amount"]  # settled, told, about to be applied
    wrong = {w: (actual.get(w, 0), expected.get(w, 0)) for w in set(actual) | set(expected)
             if actual.get(w, 0) != expected.get(w, 0)}
    assert not wrong, f"balances differ from what clients were told (actual, told): {dict(list(wrong.items())[:10])}"


def doubled(db: Database) -> list[str]:
    """Evidence of money applied twice: one key with two jobs, one job with two audit
    entries, one provider payment credited twice. (A job cannot hold two ledger records:
    its record is the job itself, ``services/journal.py``.)"""
    found: list[str] = []
    for row in db.jobs.aggregate([
        {"$match": {"idempotencyKey": {"$ne": None}}},
        {"$group": {"_id": {"o": "$ownerId", "k": "$idempotencyKey", "t": "$type"}, "n": {"$sum": 1}}},
        {"$match": {"n": {"$gt": 1}}},
    ]):
        found.append(f"key {row['_id']} has {row['n']} jobs")
    for row in db.auditlogs.aggregate([  # audit blocks list their batch's jobs
        {"$unwind": "$jobs"}, {"$group": {"_id": "$jobs.jobId", "n": {"$sum": 1}}}, {"$match": {"n": {"$gt": 1}}},
    ]):
        found.append(f"job {row['_id']} has {row['n']} audit records")
    for row in db.credits.aggregate([  # one credit document per (batch, target partition)
        {"$group": {"_id": {"from": "$from", "batch": "$batch", "to": "$to"}, "n": {"$sum": 1}}},
        {"$match": {"n": {"$gt": 1}}},
    ]):
        found.append(f"batch {row['_id']} deferred {row['n']} credit documents")
    for row in journal.ledger(db).aggregate([
        {"$match": {"providerTxId": {"$exists": True}}},
        {"$group": {"_id": "$providerTxId", "n": {"$sum": 1}}}, {"$match": {"n": {"$gt": 1}}},
    ]):
        found.append(f"provider payment {row['_id']} credited {row['n']} times")
    return found


# ------------------------------------------------------------------------------ scenarios


def fund(http: ApiClient, tally: Tally, users: Sequence[User], amount: int, workers: int = 32) -> list[Sent]:
    """Top every user up by ``amount`` through the signed provider webhook."""

    def one(user: User) -> Sent:
        ptx = f"ptx-{uuid.uuid4().hex}"
        reply = http.webhook(user.id, amount, ptx)
        return tally.add(Sent("topup", user.id, f"provider:{ptx}", reply))

    sent = fire(one, users, workers=workers)
    bad = [s.reply for s in sent if not s.accepted]
    assert not bad, f"{len(bad)} top-up(s) refused: {bad[:3]}"
    return sent
