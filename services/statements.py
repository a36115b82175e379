"""Monthly statements: computed from the ledger, stored once a month is closed.

A statement's lines are the wallet's transactions of the month (``parties_settled``
on the settled jobs that hold them, ``services/journal.py``, one index range); its
opening and closing balances come from the checkpoints (``services/checkpoints.py``),
a second path, so the tie-out ``opening + net == closing`` checks the one against the
other. The current month is computed on every request and marked provisional.
A closed month (``ledger.periods.is_closed``) is stored once: its lines in chunks,
then its head and an entry in the statements' audit chain in one transaction; the
head's ``_id`` is ``<userId>:<YYYY-MM>``, so two beats or a restart mid-run store it
once, and a stored statement is never rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from pymongo import ReplaceOne
from pymongo.client_session import ClientSession
from pymongo.database import Database

from ledger import audit
from ledger.periods import MS, Month, is_closed, month_of
from ledger.statements import LINE_FIELDS, lines_digest, statement_hash, statement_line, summarize
from ledger.states import Role
from ledger.timeutil import iso, to_ms
from services import journal, operator_audit
from services.checkpoints import balance_at

log = logging.getLogger("purser.statements")

STATEMENT_CHAIN = audit.STATEMENT_CHAIN
LINES_PER_CHUNK = 1000


class NotYet(ValueError):
    """A month that has not started."""


class BeforeWallet(ValueError):
    """A month that ended before the wallet existed."""


def statement_id(user_id: str, month: Month) -> str:
    return f"{user_id}:{month.label}"


def _lines(db: Database, user_id: str, start: datetime, end: datetime) -> Iterator[dict[str, Any]]:
    txs = journal.find(db, {"parties": user_id, "createdAt": {"$gte": start, "$lt": end}},
                       ["entries", "type", "createdAt", "refundOf"], sort=[("createdAt", 1), ("_id", 1)])
    for tx in txs:
        yield statement_line(tx, user_id)


def _paid(db: Database, user_id: str, start: datetime, end: datetime) -> dict[str, int]:
    """Payouts the provider paid in ``[start, end)``: updated since ``start`` (``owner_updated``)."""
    paid = {"count": 0, "amount": 0}
    for doc in db.payouts.find({"userId": user_id, "updatedAt": {"$gte": start}}, {"amount": 1, "events": 1}):
        for event in doc.get("events", ()):
            if event.get("status") == "paid" and start <= event["at"] < end:
                paid["count"] += 1
                paid["amount"] += doc["amount"]
    return paid


def compute(db: Database, user_id: str, month: Month, now: datetime, *, settle_margin: timedelta) -> dict[str, Any]:
    """The statement of ``month`` for ``user_id`` as the ledger says now (lines included)."""
    now = to_ms(now)
    if month.start > now:
        raise NotYet(month.label)
    wallet = db.wallets.find_one({"_id": user_id}, {"createdAt": 1})
    if wallet is None or (wallet.get("createdAt") and wallet["createdAt"] >= month.end):
        raise BeforeWallet(month.label)
    closed = is_closed(month, now, settle_margin)
    end = month.end if closed else now + MS
    lines = list(_lines(db, user_id, month.start, end))
    opening = balance_at(db, user_id, month.start - MS).balance
    closing = balance_at(db, user_id, end - MS).balance
    body = summarize(lines, opening, closing, _paid(db, user_id, month.start, end))
    return {"userId": user_id, "walletId": user_id, "period": month.label, "currency": "COIN",
            "from": iso(month.start), "to": iso(end), "provisional": not closed, **body, "lines": lines}


def _head(statement: dict[str, Any], now: datetime) -> dict[str, Any]:
    head = {k: v for k, v in statement.items() if k != "lines"}
    head.update(_id=f"{statement['userId']}:{statement['period']}", generatedAt=iso(now),
                linesDigest=lines_digest(statement["lines"]),
                chunks=(len(statement["lines"]) + LINES_PER_CHUNK - 1) // LINES_PER_CHUNK)
    head["hash"] = statement_hash(head)
    return head


def store_closed(db: Database, user_id: str, month: Month, now: datetime, *,
                 settle_margin: timedelta) -> tuple[dict[str, Any], bool]:
    """Store the closed ``month``'s statement once; ``(head, created)``.

    Lines go first, in chunks with ids derived from the statement (a rerun rewrites the
    same content: a closed month's ledger no longer changes); the head and its audit
    entry then commit together. The head is what is never rewritten.
    """
    sid = statement_id(user_id, month)
    existing = db.statements.find_one({"_id": sid})
    if existing is not None:
        return existing, False
    statement = compute(db, user_id, month, now, settle_margin=settle_margin)
    if statement["provisional"]:
        raise NotYet(month.label)
    head = _head(statement, now)
    lines = statement["lines"]
    chunks = [ReplaceOne({"_id": f"{sid}:{n:05d}"},
                         {"statementId": sid, "n": n, "lines": lines[i:i + LINES_PER_CHUNK]}, upsert=True)
              for n, i in enumerate(range(0, len(lines), LINES_PER_CHUNK))]
    if chunks:
        db.statement_lines.bulk_write(chunks, ordered=False)

    def apply(session: ClientSession) -> operator_audit.Change | None:
        if db.statements.find_one({"_id": sid}, {"_id": 1}, session=session) is not None:
            return None  # stored meanwhile by another beat: that one stands
        db.statements.insert_one(head, session=session)
        return operator_audit.Change(None, {"hash": head["hash"], "period": month.label,
                                            "closingBalance": head["closingBalance"]})

    done = operator_audit.record(db, "statement.closed", {"type": "system", "id": "statements"},
                                 {"type": "statement", "id": sid}, None, apply, chain=STATEMENT_CHAIN)
    if done is None:
        return db.statements.find_one({"_id": sid}) or head, False
    log.info("statement stored", extra={"statementId": sid, "movements": head["movements"]})
    return head, True


def stored_lines(db: Database, statement_id_: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for chunk in db.statement_lines.find({"statementId": statement_id_}).sort("n", 1):
        out.extend(chunk["lines"])
    return out


def view(head: dict[str, Any], lines: list[dict[str, Any]]) -> dict[str, Any]:
    """A statement as the API answers it (a stored one keeps its hash)."""
    body = {k: v for k, v in head.items() if k not in ("_id", "chunks")}
    body["lines"] = lines
    return body


def get(db: Database, user_id: str, month: Month, now: datetime, *, settle_margin: timedelta) -> dict[str, Any]:
    """The statement: stored when the month is closed (stored now if beat has not yet), else provisional."""
    if is_closed(month, now, settle_margin):
        head, _ = store_closed(db, user_id, month, now, settle_margin=settle_margin)
        return view(head, stored_lines(db, head["_id"]))
    return compute(db, user_id, month, now, settle_margin=settle_margin)


def periods(db: Database, user_id: str, now: datetime, *, limit: int = 24) -> list[dict[str, Any]]:
    """The wallet's months, newest first (the current one provisional), from its creation on."""
    wallet = db.wallets.find_one({"_id": user_id}, {"createdAt": 1})
    if wallet is None:
        return []
    first = month_of(wallet.get("createdAt") or now)
    stored = {d["period"]: d for d in db.statements.find({"userId": user_id}, {"period": 1, "hash": 1,
                                                                                "closingBalance": 1})
              .sort("period", -1).limit(limit)}
    out = []
    month = month_of(now)
    while month >= first and len(out) < limit:
        doc = stored.get(month.label)
        out.append({"period": month.label, "stored": doc is not None, "hash": doc["hash"] if doc else None,
                    "closingBalance": doc["closingBalance"] if doc else None})
        month = month.previous()
    return out


def csv_text(statement: dict[str, Any]) -> str:
    """One line per movement with its job id, then nothing else: the summary is in the JSON."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(LINE_FIELDS), lineterminator="\n")
    writer.writeheader()
    for line in statement["lines"]:
        writer.writerow({k: "" if line.get(k) is None else line[k] for k in LINE_FIELDS})
    return out.getvalue()


# --- beat: close last month for creators -----------------------------------------------


def close_month(db: Database, month: Month, now: datetime, *, settle_margin: timedelta,
                chunk: int = 200) -> dict[str, int]:
    """Store ``month``'s statement for every creator that had a wallet by its end.

    Walks creators by ``_id`` (the users' primary index) with a cursor kept per month in
    ``rollup_state``, so a restarted beat resumes where it stopped; creators already
    stored are a point read each.
    """
    if not is_closed(month, now, settle_margin):
        return {"stored": 0, "existing": 0}
    state_id = f"statements:{month.label}"
    cursor = (db.rollup_state.find_one({"_id": state_id}) or {}).get("after", "")
    counts = {"stored": 0, "existing": 0}
    while True:
        users = list(db.users.find({"role": Role.CREATOR, "_id": {"$gt": cursor}}, {"_id": 1, "createdAt": 1})
                     .sort("_id", 1).limit(chunk))  # the ``role_id`` index
        for user in users:
            if user.get("createdAt") and user["createdAt"] >= month.end:
                continue  # no wallet in that month
            _, created = store_closed(db, user["_id"], month, now, settle_margin=settle_margin)
            counts["stored" if created else "existing"] += 1
        if not users:
            break
        cursor = users[-1]["_id"]
        db.rollup_state.update_one({"_id": state_id}, {"$max": {"after": cursor}}, upsert=True)
    return counts
