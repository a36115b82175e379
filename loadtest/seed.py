"""Seed a Purser database for load: users of every tier, wallets, contents, plans, funds.

Users and wallets are inserted directly (argon2 for thousands of users through
``services.users.create_user`` would take minutes); they share one argon2 hash of
:data:`PASSWORD`, computed once with the same hasher settings, so a login costs
what it costs in production. Wallets start at zero and are funded through the real
settlement path: one provider top-up job per wallet, settled by the Celery
workers, so the ledger balances and every money invariant holds from the start.

``python -m loadtest.seed [--manifest var/loadtest-manifest.json]`` seeds the
stack named by ``MONGODB_URI`` / ``REDIS_URL`` (workers must be running) and writes
the manifest the locustfile reads.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo.database import Database

from ledger.timeutil import utcnow

PASSWORD = "loadtest-password-1"
TIERS = ("free", "premium", "creator", "admin")
DEFAULT_MANIFEST = Path(__file__).resolve().parent.parent / "var" / "loadtest-manifest.json"

Ringer = Callable[[int, str | None], None]


@dataclass(frozen=True)
class SeedUser:
    id: str
    email: str
    role: str


@dataclass(frozen=True)
class SeedContent:
    id: str
    creator_id: str
    price: int


@dataclass
class Population:
    password: str
    users: list[SeedUser] = field(default_factory=list)
    contents: list[SeedContent] = field(default_factory=list)
    plans: dict[str, int] = field(default_factory=dict)  # creator id -> price per period

    def by_role(self, *roles: str) -> list[SeedUser]:
        return [u for u in self.users if u.role in roles]

    @property
    def payers(self) -> list[SeedUser]:
        """Users who spend money in the load (everyone but admins)."""
        return self.by_role("free", "premium", "creator")

    @property
    def creators(self) -> list[SeedUser]:
        return self.by_role("creator")

    def to_manifest(self) -> dict[str, Any]:
        return {"password": self.password, "users": [asdict(u) for u in self.users],
                "contents": [asdict(c) for c in self.contents], "plans": self.plans}

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> Population:
        return cls(password=data["password"], users=[SeedUser(**u) for u in data["users"]],
                   contents=[SeedContent(**c) for c in data["contents"]], plans=dict(data["plans"]))

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_manifest()))
        return path

    @classmethod
    def read(cls, path: Path) -> Population:
        return cls.from_manifest(json.loads(Path(path).read_text()))


_hash: str | None = None


def password_hash() -> str:
    """The argon2 hash of :data:`PASSWORD`, with the hasher settings of ``services.users``."""
    global _hash
    if _hash is None:
        from services.users import hash_password

        _hash = hash_password(PASSWORD)
    return _hash


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def seed_population(
    db: Database,
    *,
    free: int,
    premium: int,
    creators: int,
    admins: int = 2,
    contents_per_creator: int = 5,
    rng: random.Random | None = None,
) -> Population:
    """Insert users and wallets (balance 0) of every tier, contents and subscription plans."""
    rng = rng or random.Random(7)
    now = utcnow()
    run = uuid.uuid4().hex[:6]
    pop = Population(password=PASSWORD)
    users, wallets = [], []
    for role, count in (("free", free), ("premium", premium), ("creator", creators), ("admin", admins)):
        for i in range(count):
            uid = str(ObjectId())
            email = f"{role}{i}-{run}@load.example.com"
            pop.users.append(SeedUser(uid, email, role))
            users.append({"_id": uid, "email": email, "passwordHash": password_hash(), "role": role,
                          "displayName": f"{role} {i}", "accountStatus": "active", "createdAt": now})
            wallets.append({"_id": uid, "userId": uid, "balance": 0, "status": "active", "version": 0,
                            "createdAt": now, "lastTransactionAt": None})
    for chunk in _chunks(users, 1000):
        db.users.insert_many(chunk, ordered=False)
    for chunk in _chunks(wallets, 1000):
        db.wallets.insert_many(chunk, ordered=False)

    contents, plans = [], []
    for creator in pop.creators:
        price = rng.choice((50, 100, 200, 300, 500))
        pop.plans[creator.id] = price
        plans.append({"_id": creator.id, "price": price, "periodDays": 30, "isActive": True,
                      "createdAt": now, "updatedAt": now})
        for n in range(contents_per_creator):
            content = SeedContent(str(ObjectId()), creator.id, rng.choice((10, 20, 50, 100, 200)))
            pop.contents.append(content)
            contents.append({"_id": content.id, "creatorId": creator.id, "title": f"load content {n}",
                             "price": content.price, "isActive": True, "createdAt": now})
    if plans:
        db.plans.insert_many(plans, ordered=False)
    for chunk in _chunks(contents, 1000):
        db.contents.insert_many(chunk, ordered=False)
    return pop


def submit_topups(db: Database, user_ids: Iterable[str], amount: int, *, partitions: int,
                  ring: Ringer) -> list[str]:
    """Queue one provider top-up job per wallet (what the signed webhook stores) and ring."""
    from ledger.operations import TopUp
    from services.jobs import Intake, accept_jobs

    intakes = []
    for uid in user_ids:
        provider_tx = f"seed-{uuid.uuid4().hex}"
        intakes.append(Intake(TopUp(uid, amount, provider_tx), uid, f"provider:{provider_tx}"))
    return [job["_id"] for job in accept_jobs(db, intakes, partitions=partitions, ring=ring).stored]


def job_statuses(db: Database, job_ids: list[str], chunk: int = 50) -> dict[str, dict[str, Any]]:
    """``{job id: job document (status, dates, error, type, partition)}``, read in small ``$in`` chunks.

    Small chunks on purpose: SecantusDB's cost of an ``$in`` grows with the square of
    its length (2,000 ids take seconds, 40 chunks of 50 a tenth of that).
    """
    found: dict[str, dict[str, Any]] = {}
    projection = {"status": 1, "createdAt": 1, "settledAt": 1, "error": 1, "type": 1, "partition": 1}
    for ids in _chunks(job_ids, chunk):
        for doc in db.jobs.find({"_id": {"$in": ids}}, projection):
            found[doc["_id"]] = doc
    return found


def oldest_queued(db: Database, partitions: int) -> list[str]:
    """The oldest queued job id of each partition: one ``partition_queue`` index probe each."""
    heads = []
    for p in range(partitions):
        head = db.jobs.find_one({"partition": p, "status": "queued"}, {"_id": 1}, sort=[("createdAt", 1)])
        if head is not None:
            heads.append(head["_id"])
    return heads


def wait_queue_empty(db: Database, *, timeout: float, kick: Callable[[], None] | None = None,
                     poll: float = 0.1, partitions: int | None = None) -> float:
    """Wait until no job at all is queued; return the seconds waited.

    Probes the oldest queued job of each partition (index probes), not a count, so
    waiting costs the store next to nothing; ``kick`` re-rings (like the sweeper)
    when no partition's head has moved for 3 s.
    """
    if partitions is None:
        from infra.config import get_settings

        partitions = get_settings().ledger_partitions
    started = time.monotonic()
    last: list[str] | None = None
    moved = started
    while True:
        heads = oldest_queued(db, partitions)
        if not heads:
            return time.monotonic() - started
        now = time.monotonic()
        if heads != last:
            last, moved = heads, now
        elif kick is not None and now - moved > 3:
            kick()
            moved = now
        if now - started > timeout:
            raise TimeoutError(f"jobs still queued after {timeout:.0f} s (oldest per partition: {heads[:8]})")
        time.sleep(poll)


def wait_settled(db: Database, job_ids: list[str], *, timeout: float,
                 kick: Callable[[], None] | None = None) -> dict[str, int]:
    """Wait until the queue is empty (the caller submits nothing meanwhile); count ``job_ids`` by status."""
    wait_queue_empty(db, timeout=timeout, kick=kick)
    counts: dict[str, int] = {}
    for doc in job_statuses(db, job_ids).values():
        counts[doc["status"]] = counts.get(doc["status"], 0) + 1
    missing = len(job_ids) - sum(counts.values())
    if missing:
        counts["missing"] = missing
    return counts


def fund(db: Database, user_ids: list[str], amount: int, *, partitions: int, ring: Ringer,
         kick: Callable[[], None] | None = None, timeout: float = 300.0) -> dict[str, int]:
    """Top up every wallet through the workers and wait until all top-ups settled."""
    ids = submit_topups(db, user_ids, amount, partitions=partitions, ring=ring)
    counts = wait_settled(db, ids, timeout=timeout, kick=kick)
    if counts.get("settled", 0) != len(ids):
        raise RuntimeError(f"funding did not settle every top-up: {counts}")
    return counts



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.seed", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--free", type=int, default=1500)
    parser.add_argument("--premium", type=int, default=1000)
    parser.add_argument("--creators", type=int, default=100)
    parser.add_argument("--admins", type=int, default=2)
    parser.add_argument("--contents-per-creator", type=int, default=5)
    parser.add_argument("--fund", type=int, default=1_000_000, help="coins topped up per wallet (0: none)")
    args = parser.parse_args(argv)

    from infra.config import get_settings
    from infra.mongo import get_db
    from tasks.settle import ring

    db = get_db()
    partitions = get_settings().ledger_partitions

    def kick() -> None:
        for p in range(partitions):
            ring(p, None, force=True)

    started = time.perf_counter()
    pop = seed_population(db, free=args.free, premium=args.premium, creators=args.creators, admins=args.admins,
                          contents_per_creator=args.contents_per_creator)
    if args.fund:
        fund(db, [u.id for u in pop.payers], args.fund, partitions=partitions, ring=ring, kick=kick)
    pop.write(args.manifest)
    print(f"seeded {len(pop.users)} users, {len(pop.contents)} contents, {len(pop.plans)} plans "
          f"in {time.perf_counter() - started:.1f} s; manifest {args.manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
