"""``python -m loadtest.history_bench``: balance-as-of and a monthly statement against history length.

Issue 25's benchmark. For each history length (default 1,000 / 10,000 / 100,000 ledger
entries of one creator's wallet), in one run on one fresh SecantusDB:

1. seed: a fan funded once, then gifts from the fan to the creator (one creator entry
   each), queued as ordinary jobs (``services.jobs.accept_jobs``, the system's batch intake) and
   settled by the settler itself (``services.settlement.settle_partition``) in batches of
   ``--batch`` with the clock at the batch's instant, spread evenly over the months
   before the measured month; the measured month (``2025-12``) always gets the same
   ``--month-entries`` gifts, so only the history *before* it grows. Fan and creator share
   a partition: no cross-partition credits, the fastest valid ledger settlement writes.
   Beat's fold (``services.checkpoints.roll_up``) writes the checkpoints after every batch
   as a beat folding every minute would (``--fold batch``), or once at the end (``--fold
   end``: windows as wide as the fold allows, the worst case for ``balance_at``);
2. measure, once every size is seeded, in alternating rounds (shortest to longest, then
   back), ``--repeat`` times each per round (median of the rounds' medians, and max ms): ``balance_at`` at the end of
   the measured month and in its middle, and ``statements.compute`` of the month (what
   ``GET /api/statements/2025-12`` does for a month not yet stored, lines included).

Documents read are counted on the wire by a command listener on the client (documents
in every ``find``/``getMore`` answer), commands likewise; what the store examined to answer
(index keys and documents) is the sum of ``explain`` (executionStats) over the finds of one
call, captured by the same listener. The verdict: the cost at the longest history ÷ the cost at the shortest.
Writes ``loadtest/results/history-<date>.json``; exit status 1 if a measured answer is
wrong (the as-of balance is checked against a replay, the statement's tie-out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bson import ObjectId
from pymongo import MongoClient, monitoring

RESULTS = Path(__file__).resolve().parent / "results"
MONTH = (2025, 12)
HISTORY_START = datetime(2024, 1, 1, tzinfo=UTC)
PARTITIONS = 8


class ReadCounter(monitoring.CommandListener):
    """Documents returned by find/getMore/aggregate and commands sent, since the last :meth:`take`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.documents = 0
        self.commands = 0
        self.captured: list[tuple[str, dict[str, Any]]] | None = None  # (database, find command) when capturing

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.commands += 1
            if self.captured is not None and event.command_name == "find":
                command = {k: v for k, v in event.command.items() if not k.startswith("$") and k != "lsid"}
                self.captured.append((event.database_name, command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        cursor = event.reply.get("cursor") if isinstance(event.reply, dict) else None
        if isinstance(cursor, dict):
            batch = cursor.get("firstBatch", cursor.get("nextBatch", ()))
            with self._lock:
                self.documents += len(batch)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> tuple[int, int]:
        with self._lock:
            out = (self.documents, self.commands)
            self.documents = self.commands = 0
        return out


def log(message: str) -> None:
    print(f"[history-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


MARGIN = timedelta(seconds=120)  # HISTORY_MARGIN_SECONDS' default


def _settle_batches(db: Any, ops: list[Any], instants: list[datetime], batch: int, fold: bool = False) -> None:
    """Settle ``ops`` in batches dated at each batch's first instant; with ``fold``, run beat's
    roll-up after every batch, as a beat folding every ROLLUP_INTERVAL_SECONDS would."""
    from services import checkpoints
    from services.jobs import Intake, accept_jobs
    from services.settlement import settle_partition

    for start in range(0, len(ops), batch):
        chunk = ops[start:start + batch]
        at = instants[start]
        jobs = accept_jobs(db, [Intake(op, op.wallet) for op in chunk], partitions=PARTITIONS, ring=None).stored
        settle_partition(db, jobs[0]["partition"], partitions=PARTITIONS, batch_max=batch, clock=lambda at=at: at)
        if fold:
            checkpoints.roll_up(db, partitions=PARTITIONS, now=at + MARGIN + timedelta(seconds=1), margin=MARGIN,
                                max_windows=100_000)


def seed(db: Any, history: int, month_entries: int, batch: int, fold: str) -> dict[str, Any]:
    """A creator with ``history`` entries before the measured month and ``month_entries`` in it."""
    import migrations
    from ledger.operations import Gift, TopUp, partition_of
    from ledger.periods import Month
    from services import checkpoints, journal
    migrations.up(db)

    def user(role: str) -> str:  # a fan and a creator in partition 0: the settler writes no credit document
        while partition_of(uid := str(ObjectId()), PARTITIONS) != 0:
            pass
        db.users.insert_one({"_id": uid, "email": f"{uid}@bench.invalid", "passwordHash": "x", "role": role,
                             "displayName": None, "accountStatus": "active", "createdAt": HISTORY_START})
        db.wallets.insert_one({"_id": uid, "userId": uid, "balance": 0, "status": "active", "version": 0,
                               "createdAt": HISTORY_START, "lastTransactionAt": None})
        return uid

    fan, creator = user("free"), user("creator")
    month = Month(*MONTH)
    total = history + month_entries
    _settle_batches(db, [TopUp(fan, 100 * total, "ptx-bench")], [HISTORY_START + timedelta(minutes=1)], batch)
    span = (month.start - HISTORY_START - timedelta(hours=1)).total_seconds()
    spacing = span / max(1, history)
    before = [HISTORY_START + timedelta(hours=1, seconds=i * spacing) for i in range(history)]
    inside = [month.start + timedelta(seconds=i * (27 * 86400 / max(1, month_entries))) for i in range(month_entries)]
    started = time.perf_counter()
    for instants in (before, inside):  # separately: no batch straddles the month's start
        _settle_batches(db, [Gift(fan, creator, 1 + i % 97) for i in range(len(instants))], instants, batch,
                        fold=fold == "batch")
    settled = time.perf_counter() - started
    started = time.perf_counter()
    folded = checkpoints.roll_up(db, partitions=PARTITIONS, now=month.end + timedelta(days=30),
                                 margin=MARGIN, max_windows=100_000)
    return {"fan": fan, "creator": creator, "settle_seconds": round(settled, 1),
            "rollup_seconds": round(time.perf_counter() - started, 1),
            "checkpoints": db.balance_checkpoints.count_documents({}), "final_fold_windows": folded.windows,
            "creator_entries": sum(1 for _ in journal.find(db, {"parties": creator}, ["_id"]))}


def _examined(client: MongoClient, commands: list[tuple[str, dict[str, Any]]]) -> dict[str, int]:
    """What the store examined to answer ``commands`` (``explain`` with executionStats of each find)."""
    keys = docs = 0
    for database, command in commands:
        stats = client[database].command("explain", command, verbosity="executionStats").get("executionStats", {})
        keys += int(stats.get("totalKeysExamined", 0))
        docs += int(stats.get("totalDocsExamined", 0))
    return {"keys_examined": keys, "documents_examined": docs}


def _measure(counter: ReadCounter, run: Callable[[], Any], repeat: int, client: MongoClient) -> dict[str, Any]:
    times, docs, commands = [], [], []
    result = None
    counter.captured = []
    run()  # warms the client's connection and the store's caches alike for every size; its finds are explained
    captured, counter.captured = counter.captured, None
    for _ in range(repeat):
        counter.take()
        started = time.perf_counter()
        result = run()
        times.append((time.perf_counter() - started) * 1000)
        d, c = counter.take()
        docs.append(d)
        commands.append(c)
    return {"ms_median": round(statistics.median(times), 2), "ms_max": round(max(times), 2),
            "documents_read": max(docs), "commands": max(commands), **_examined(client, captured), "result": result}


def measure(db: Any, counter: ReadCounter, creator: str, repeat: int) -> dict[str, Any]:
    from ledger.periods import MS, Month
    from services import checkpoints, journal, statements

    month = Month(*MONTH)
    now = month.end + timedelta(days=30)
    out: dict[str, Any] = {}
    for name, at in (("as_of_month_end", month.last_instant), ("as_of_mid_month", month.start + timedelta(days=14))):
        m = _measure(counter, lambda at=at: checkpoints.balance_at(db, creator, at), repeat, db.client)
        got = m.pop("result")
        replay = sum(e["amount"] for tx in journal.find(db, {"parties": creator, "createdAt": {"$lt": at + MS}},
                                                        ["entries"])
                     for e in tx["entries"] if e["walletId"] == creator)
        m.update(balance=got.balance, replay_ok=got.balance == replay, balance_at_documents=got.documents)
        out[name] = m
    m = _measure(counter, lambda: statements.compute(db, creator, month, now, settle_margin=timedelta(seconds=120)),
                 repeat, db.client)
    statement = m.pop("result")
    m.update(movements=statement["movements"], tie_out_ok=statement["tieOut"]["ok"])
    out["statement"] = m
    return out


NAMES = ("as_of_month_end", "as_of_mid_month", "statement")


def _combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One size's figures over its measuring rounds: the median of the rounds' medians, the worst max."""
    out: dict[str, Any] = {}
    for name in NAMES:
        figures = [r[name] for r in rounds]
        merged = dict(figures[-1])
        merged["ms_median"] = round(statistics.median(f["ms_median"] for f in figures), 2)
        merged["ms_max"] = max(f["ms_max"] for f in figures)
        merged["ms_median_by_round"] = [f["ms_median"] for f in figures]
        for key in ("documents_read", "commands", "keys_examined", "documents_examined"):
            merged[key] = max(f[key] for f in figures)
        merged["ok"] = all(f.get("replay_ok", True) and f.get("tie_out_ok", True) for f in figures)
        out[name] = merged
    return out


def run(uri: str, sizes: list[int], *, month_entries: int = 1000, batch: int = 200, repeat: int = 15,
        fold: str = "batch", rounds: int = 2) -> dict[str, Any]:
    """Seed every size in its own database on the store at ``uri``, then measure them in
    alternating order (shortest to longest, then back: drift and the store's work after a
    seed weigh on every size alike); the databases are dropped at the end."""
    counter = ReadCounter()
    client: MongoClient = MongoClient(uri, tz_aware=True, event_listeners=[counter])
    results: dict[str, Any] = {"started": datetime.now(UTC).isoformat(), "sizes": sizes,
                               "month_entries": month_entries, "batch": batch, "repeat": repeat, "fold": fold,
                               "rounds": rounds, "runs": {}}
    seeded: dict[int, dict[str, Any]] = {}
    measured: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    try:
        for size in sizes:
            db = client[f"purser_history_bench_{size}"]
            client.drop_database(db.name)
            log(f"seeding {size:,} entries before the month + {month_entries:,} in it")
            seeded[size] = seed(db, size, month_entries, batch, fold)
            log(f"  settled in {seeded[size]['settle_seconds']} s ({seeded[size]['checkpoints']} checkpoints)")
        order = [size for r in range(rounds) for size in (sizes if r % 2 == 0 else list(reversed(sizes)))]
        for size in order:
            log(f"measuring {size:,}")
            counter.take()
            measured[size].append(measure(client[f"purser_history_bench_{size}"], counter, seeded[size]["creator"],
                                          repeat))
        for size in sizes:
            seed_figures = {k: v for k, v in seeded[size].items() if k not in ("fan", "creator")}
            results["runs"][str(size)] = {"seed": seed_figures, **_combine(measured[size])}
        first, last = results["runs"][str(sizes[0])], results["runs"][str(sizes[-1])]
        results["ratio_longest_to_shortest"] = {
            name: {"ms": round(last[name]["ms_median"] / max(first[name]["ms_median"], 1e-9), 2),
                   "documents_read": round(last[name]["documents_read"] / max(first[name]["documents_read"], 1), 2),
                   "keys_examined": round(last[name]["keys_examined"] / max(first[name]["keys_examined"], 1), 2)}
            for name in NAMES}
    finally:
        for size in sizes:
            client.drop_database(f"purser_history_bench_{size}")
        client.close()
    results["ok"] = all(run[name]["ok"] for run in results["runs"].values() for name in NAMES)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="history lengths (creator entries before "
                                                                      "the measured month)")
    parser.add_argument("--month-entries", type=int, default=1000, help="creator entries in the measured month")
    parser.add_argument("--batch", type=int, default=200, help="jobs per settled batch (SETTLE_BATCH_MAX)")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--fold", choices=("batch", "end"), default="batch",
                        help="run beat's roll-up after every settled batch (as in production, where it runs "
                             "every ROLLUP_INTERVAL_SECONDS) or once at the end (one window spans up to "
                             "20 audit blocks per partition: the worst case of balance_at)")
    parser.add_argument("--mongodb-uri", default=None, help="an existing store (default: a fresh SecantusDB)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]

    from devstack.stores import MongoServer

    server = None
    tmp = tempfile.TemporaryDirectory(prefix="purser-history-bench-")
    uri = args.mongodb_uri
    if uri is None:
        server = MongoServer(Path(tmp.name) / "data")
        server.start()
        uri = server.uri
    try:
        results = run(uri, sizes, month_entries=args.month_entries, batch=args.batch, repeat=args.repeat,
                      fold=args.fold)
    finally:
        if server is not None:
            server.stop()
        tmp.cleanup()
    ok = results["ok"]
    out = args.out or RESULTS / f"history-{datetime.now(UTC).strftime('%Y-%m-%dT%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    names = NAMES
    print(f"{'entries':>10} " + " ".join(f"{n + ' ms / docs read / keys':>38}" for n in names))
    for size in sizes:
        one = results["runs"][str(size)]
        cells = [f"{one[n]['ms_median']} / {one[n]['documents_read']} / {one[n]['keys_examined']}" for n in names]
        print(f"{one['seed']['creator_entries']:>10,} " + " ".join(f"{c:>38}" for c in cells))
    print(f"longest ÷ shortest history: {json.dumps(results['ratio_longest_to_shortest'])}; answers "
          f"{'correct' if ok else 'WRONG'}; written to {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
