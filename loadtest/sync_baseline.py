"""The synchronous baseline: one MongoDB transaction per transfer, inside the HTTP handler.

What the seed report describes and issue 18 measures Purser against: the request
handler authenticates the caller (the same JWT) and, in ONE transaction, debits the
sender with a balance guard, credits the receiver and inserts a ledger record, then
answers ``201``. No queue, no batching, no idempotency record, no job document:
the least a synchronous design can do per transfer, which favours the baseline.

It runs as its own small Flask app (``create_app``), served by gunicorn with the
repository's ``gunicorn.conf.py`` (same worker class, processes and threads as the
real web tier), against the same store as Purser, on collections of its own
(``sync_wallets``, ``sync_ledger`` with the index Purser's ``transactions`` have for
a wallet's history), so Purser's invariants never see them.

:func:`end_to_end` measures both designs in the same run: transfers/s settled end to
end over HTTP (Purser: accept + settle sharing the store; baseline: ``201``s).
"""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Flask, Response, jsonify, request

from devstack.apps import WebServer
from loadtest.common import CpuMeter, Http, MoneyMix, closed_loop, log, ratio, wait_drained
from loadtest.seed import Population, job_statuses
from loadtest.stack import ROOT, Stack

WALLETS = "sync_wallets"
LEDGER = "sync_ledger"
AUDIT = "sync_audit"


class Refused(Exception):
    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


def _problem(status: int, code: str) -> tuple[Response, int]:
    return jsonify(code=code, status=status), status


def _caller(settings: Any) -> str | None:
    """The bearer token's user id, or None (any token problem is a 401)."""
    from api.auth import decode_token

    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return None
    try:
        return decode_token(settings, header[7:].strip()).user_id
    except Exception:  # noqa: BLE001 - any token problem is a 401
        return None


def _amount(value: Any) -> int | None:
    from ledger.money import MAX_AMOUNT

    return value if type(value) is int and 0 < value <= MAX_AMOUNT else None


def _in_transaction(db: Any, apply: Any) -> tuple[Response, int] | None:
    """Run ``apply(session)`` in one transaction (retried on conflicts); a refusal as its problem."""
    try:
        with db.client.start_session() as session:
            session.with_transaction(apply)
    except Refused as exc:
        return _problem(exc.status, exc.code)
    return None


def create_app() -> Flask:
    """The baseline's WSGI app: ``POST /transfer``, ``POST /gift`` and ``GET /api/health``."""
    from infra.config import get_settings

    app = Flask("purser_sync_baseline")
    settings = get_settings()

    @app.get("/api/health")
    def health() -> Any:
        return jsonify(status="ok")

    def payment(field: str) -> tuple[tuple[str, str, int] | None, Any]:
        """(caller, counterparty, amount) of a payment request, or the problem to answer."""
        from ledger.money import is_user_id

        sender = _caller(settings)
        if sender is None:
            return None, _problem(401, "UNAUTHORIZED")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return None, _problem(400, "VALIDATION_FAILED")
        other, amount = body.get(field), _amount(body.get("amount"))
        if not is_user_id(other) or amount is None:  # never a system wallet as the counterparty
            return None, _problem(400, "VALIDATION_FAILED")
        if other == sender:
            return None, _problem(422, "SELF_TRANSFER")
        return (sender, other, amount), None

    @app.post("/transfer")
    def transfer() -> Any:
        parsed, problem = payment("receiverId")
        return problem if parsed is None else _transfer(*parsed)

    @app.post("/gift")
    def gift() -> Any:
        parsed, problem = payment("creatorId")
        return problem if parsed is None else _gift(*parsed, request.headers.get("X-Request-ID") or uuid.uuid4().hex)

    return app


def _transfer(sender: str, receiver: str, amount: int) -> Any:
    from bson import ObjectId

    from infra.mongo import get_db

    db = get_db()
    tx_id = str(ObjectId())

    def apply(session: Any) -> None:
        now = datetime.now(UTC)
        debit = db[WALLETS].update_one({"_id": sender, "balance": {"$gte": amount}},
                                       {"$inc": {"balance": -amount}}, session=session)
        if debit.matched_count != 1:
            raise Refused(422, "INSUFFICIENT_FUNDS")
        credit = db[WALLETS].update_one({"_id": receiver}, {"$inc": {"balance": amount}}, session=session)
        if credit.matched_count != 1:
            raise Refused(422, "RECEIVER_NOT_FOUND")
        db[LEDGER].insert_one({"_id": tx_id, "type": "transfer", "parties": sorted((sender, receiver)),
                               "entries": [{"walletId": sender, "amount": -amount},
                                           {"walletId": receiver, "amount": amount}],
                               "createdAt": now}, session=session)

    return _in_transaction(db, apply) or (jsonify(transferId=tx_id, status="settled"), 201)


def _gift(sender: str, creator: str, amount: int, request_id: str) -> Any:
    """One transaction: guarded debit of the fan, ledger and audit records, then the three credits.

    The split is the domain's own (``ledger.rules.revenue_entries``: 80/15/5, largest
    remainder), so both designs move the same coins. The credits to the hot documents
    (the creator and the two platform wallets) go last, in one ``bulk_write``: the
    shortest time a transaction holds them before its commit, which is what limits a
    synchronous design when many fans pay one creator (every other gift in flight
    conflicts on them and retries).
    """
    from bson import ObjectId
    from pymongo import UpdateOne

    from infra.mongo import get_db
    from ledger.rules import revenue_entries

    db = get_db()
    tx_id = str(ObjectId())
    entries, parts = revenue_entries(sender, creator, amount, "gift")
    rows = [{"walletId": e.wallet_id, "amount": e.amount} for e in entries]
    credits = [UpdateOne({"_id": e.wallet_id}, {"$inc": {"balance": e.amount}}) for e in entries if e.amount > 0]
    attempts = [0]  # the bench reads how often a gift ran again after a write conflict

    def apply(session: Any) -> None:
        now = datetime.now(UTC)
        attempts[0] += 1
        debit = db[WALLETS].update_one({"_id": sender, "balance": {"$gte": amount}},
                                       {"$inc": {"balance": -amount}}, session=session)
        if debit.matched_count != 1:
            raise Refused(422, "INSUFFICIENT_FUNDS")
        db[LEDGER].insert_one({"_id": tx_id, "type": "gift", "parties": sorted((sender, creator)),
                               "entries": rows, "createdAt": now}, session=session)
        db[AUDIT].insert_one({"_id": tx_id, "txId": tx_id, "type": "gift", "outcome": "settled",
                              "actor": {"type": "user", "id": sender}, "entries": rows,
                              "requestId": request_id, "attempts": attempts[0], "createdAt": now}, session=session)
        if db[WALLETS].bulk_write(credits, ordered=True, session=session).matched_count != len(credits):
            raise Refused(422, "RECEIVER_NOT_FOUND")

    return _in_transaction(db, apply) or (jsonify(giftId=tx_id, status="settled", split=parts), 201)


class SyncWebServer(WebServer):
    """Gunicorn serving :func:`create_app` with the repository's gunicorn.conf.py."""

    def build_command(self) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "loadtest.sync_baseline:create_app()"]


def seed_baseline(db: Any, pop: Population, balance: int) -> int:
    """The baseline's wallets: every payer with ``balance`` coins, the two platform wallets at zero;
    empty ledger and audit collections, the ledger with its index. Returns the payers seeded."""
    from pymongo import ASCENDING, DESCENDING

    from ledger.money import PLATFORM_PROCESSING, PLATFORM_REVENUE

    for name in (WALLETS, LEDGER, AUDIT):
        db[name].drop()
    db.create_collection(LEDGER)
    db.create_collection(AUDIT)
    db[LEDGER].create_index([("parties", ASCENDING), ("createdAt", DESCENDING)], name="parties_recent")
    docs = [{"_id": u.id, "balance": balance, "status": "active"} for u in pop.payers]
    docs += [{"_id": w, "balance": 0, "status": "active"} for w in (PLATFORM_REVENUE, PLATFORM_PROCESSING)]
    for start in range(0, len(docs), 1000):
        db[WALLETS].insert_many(docs[start:start + 1000], ordered=False)
    return len(pop.payers)


def baseline_invariants(db: Any, pop: Population, balance: int) -> dict[str, Any]:
    """The baseline's money after a run: the total kept, each wallet moved by exactly its ledger
    entries, every ledger record summing to zero and audited once."""
    moved: dict[str, int] = {}
    unbalanced = records = 0
    for tx in db[LEDGER].find({}, {"entries": 1}):
        records += 1
        unbalanced += sum(e["amount"] for e in tx["entries"]) != 0
        for e in tx["entries"]:
            moved[e["walletId"]] = moved.get(e["walletId"], 0) + e["amount"]
    start = {u.id: balance for u in pop.payers}
    drift = [doc["_id"] for doc in db[WALLETS].find({}, {"balance": 1})
             if doc["balance"] != start.get(doc["_id"], 0) + moved.get(doc["_id"], 0)]
    total = sum(doc["balance"] for doc in db[WALLETS].find({}, {"balance": 1}))
    audits, gifts = db[AUDIT].count_documents({}), db[LEDGER].count_documents({"type": "gift"})
    ok = not drift and not unbalanced and total == balance * len(pop.payers) and audits == gifts
    return {"ok": ok, "ledger_records": records, "audit_records": audits, "unbalanced_records": unbalanced,
            "wallets_off_their_ledger": drift[:10], "total": total}


def start_server(stack: Stack, env: Mapping[str, str] | None = None) -> SyncWebServer:
    server = SyncWebServer(stack.child_env(env), stack.tmp / "logs" / "sync-baseline.log",
                           concurrency=stack.options.web_workers, cwd=ROOT)
    server.start()
    return server


def _purser_round(stack: Stack, db: Any, http: Http, mix: MoneyMix, *, threads: int, seconds: float,
                  warmup: float, cap: int) -> dict[str, Any]:
    """Transfers over HTTP to Purser with the workers settling; settled transfers/s in the window.

    Clients hold off while more than ``cap`` jobs wait (accepted minus what the workers
    report as decided), so accepting never runs far ahead of settling: what is measured
    is what the two together sustain, not a backlog that settles after the window.
    """
    statuses: Counter[int] = Counter()
    accepted: list[str] = []
    lock = threading.Lock()
    done0 = stack.worker_metrics().get("jobs", 0.0)
    backlog = {"now": 0}
    stop = threading.Event()

    def monitor() -> None:
        while not stop.is_set():
            try:
                done = stack.worker_metrics().get("jobs", 0.0) - done0
            except Exception:  # noqa: BLE001 - keep the last estimate
                done = None
            if done is not None:
                with lock:
                    backlog["now"] = int(len(accepted) - done)
            stop.wait(0.25)

    def send() -> bool:
        while backlog["now"] >= cap and not stop.is_set():
            time.sleep(0.005)
        intent = mix.next(("transfer",))
        path, body = mix.http(intent)
        status, data = http.post_money(intent.payer, path, body)
        with lock:
            statuses[status] += 1
            if status == 202 and data:
                accepted.append(data["jobId"])
                backlog["now"] += 1
        return status == 202

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    cpu = CpuMeter(stack)
    cpu.start()
    try:
        loop = closed_loop(send, threads, seconds, warmup)
    finally:
        stop.set()
        watcher.join(timeout=5)
    cores = cpu.stop()
    start, end = loop["start"], loop["end"]
    backlog_end = backlog["now"]
    wait_drained(db, timeout=900)
    settled = [j["settledAt"].timestamp() for j in job_statuses(db, accepted).values()
               if j.get("status") == "settled" and j.get("settledAt")]
    in_window = sum(1 for t in settled if start <= t < end)
    return {"seconds": loop["seconds"], "accepted_per_s": loop["ok_per_s"],
            "settled_per_s": round(in_window / loop["seconds"], 1), "settled_in_window": in_window,
            "statuses": dict(statuses), "backlog_at_end": backlog_end, "cpu_cores": cores}


def _sync_round(server: SyncWebServer, stack: Stack, http: Http, mix: MoneyMix, *, threads: int,
                seconds: float, warmup: float) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def send() -> bool:
        intent = mix.next(("transfer",))
        status, _ = http.post("/transfer", {"receiverId": intent.other, "amount": intent.amount},
                              {"Authorization": f"Bearer {http.tokens[intent.payer.id]}"})
        with lock:
            statuses[status] += 1
        return status == 201

    cpu = CpuMeter(stack, extra={"sync web": [server]})
    cpu.start()
    loop = closed_loop(send, threads, seconds, warmup)
    return {"seconds": loop["seconds"], "transfers_per_s": loop["ok_per_s"], "statuses": dict(statuses),
            "failed_in_window": loop["failed"], "cpu_cores": cpu.stop()}


def end_to_end(stack: Stack, db: Any, purser_http: Http, mix: MoneyMix, pop: Population, *, threads: int,
               seconds: float, warmup: float, rounds: int, cap: int,
               spy: Callable[[str, float], Callable[[], None]] | None = None) -> dict[str, Any]:
    """Transfers/s end to end over HTTP: Purser (accept + settle) and the synchronous baseline.

    Both get the same client threads, the same transfer mix and users, the same store
    and gunicorn configuration; rounds alternate ABBA (Purser, baseline, baseline,
    Purser, ...) so drift on a shared machine moves both alike. ``spy(design, seconds)``
    may start a profiler (of the store) for each design's first round and return its
    collector. Store CPU ms per transfer is the store's cores over the rounds ÷ transfers/s.
    """
    seeded = seed_baseline(db, pop, 1_000_000)
    server = start_server(stack)
    sync_http = Http(server.base_url, purser_http.tokens)
    purser: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    try:
        for r in range(rounds):
            for design in ("purser", "baseline") if r % 2 == 0 else ("baseline", "purser"):
                log(f"end to end: {design} round {r + 1}/{rounds}")
                collect = spy(design, seconds + warmup) if spy is not None and r < 2 else None
                if design == "purser":
                    purser.append(_purser_round(stack, db, purser_http, mix, threads=threads, seconds=seconds,
                                                warmup=warmup, cap=cap))
                else:
                    baseline.append(_sync_round(server, stack, sync_http, mix, threads=threads, seconds=seconds,
                                                warmup=warmup))
                if collect is not None:
                    collect()
    finally:
        server.stop()
    p_secs = sum(x["seconds"] for x in purser)
    s_secs = sum(x["seconds"] for x in baseline)
    purser_rate = round(sum(x["settled_in_window"] for x in purser) / p_secs, 1) if p_secs else None
    sync_rate = round(sum(x["transfers_per_s"] * x["seconds"] for x in baseline) / s_secs, 1) if s_secs else None
    ledger_docs = db[LEDGER].estimated_document_count()
    totals = list(db[WALLETS].aggregate([{"$group": {"_id": None, "sum": {"$sum": "$balance"}}}]))
    conserved = bool(totals) and totals[0]["sum"] == seeded * 1_000_000
    return {
        "threads": threads, "rounds": rounds, "seconds_per_round": seconds,
        "purser_transfers_per_s": purser_rate, "baseline_transfers_per_s": sync_rate,
        "ratio": ratio(purser_rate, sync_rate, 2),
        "store_cpu_ms_per_transfer": {"purser": _store_ms(purser, purser_rate),
                                      "baseline": _store_ms(baseline, sync_rate)},
        "purser": purser, "baseline": baseline,
        "baseline_ledger_records": ledger_docs, "baseline_money_conserved": conserved,
        "design": "baseline: JWT check + one transaction (guarded debit, credit, ledger insert) per request in "
                  "the handler; Purser: accept (idempotency record + job) over HTTP, settled by the ledger "
                  "workers in batches; settled transfers/s counted by settledAt inside the window",
    }


def _store_ms(rounds: list[dict[str, Any]], rate: float | None) -> float | None:
    """The store's CPU ms per transfer over ``rounds`` (its cores in each round ÷ the design's transfers/s)."""
    cores = [r["cpu_cores"]["mongodb"] for r in rounds if "mongodb" in r.get("cpu_cores", {})]
    if not cores or not rate:
        return None
    return round(1000 * sum(cores) / len(cores) / rate, 2)
