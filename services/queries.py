"""Read models for the API: wallet history, job lists, subscriptions, credits in flight, audit lookups."""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Any

from pymongo.database import Database

from ledger.money import SYSTEM_WALLETS
from ledger.operations import partition_of
from ledger.states import JobStatus
from ledger.timeutil import iso
from services import journal


class BadCursor(ValueError):
    pass


def encode_cursor(moment: datetime, doc_id: str) -> str:
    raw = f"{int(moment.timestamp() * 1000)}:{doc_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# What encode_cursor writes: epoch milliseconds (ASCII digits) and a document id.
_CURSOR_RE = re.compile(r"([0-9]{1,15}):([0-9a-f]{24})", re.ASCII)


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    from datetime import UTC
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        match = _CURSOR_RE.fullmatch(raw)
        if match is None:
            raise BadCursor(cursor)
        return datetime.fromtimestamp(int(match.group(1)) / 1000, UTC), match.group(2)
    except (ValueError, UnicodeDecodeError, OverflowError, OSError):
        raise BadCursor(cursor) from None


def _page_filter(base: dict[str, Any], cursor: str | None, date: str) -> dict[str, Any]:
    if not cursor:
        return base
    moment, doc_id = decode_cursor(cursor)
    return {**base, "$or": [{date: {"$lt": moment}}, {date: moment, "_id": {"$lt": doc_id}}]}


def page(db: Database, collection: str, base: dict[str, Any], limit: int, cursor: str | None,
         date: str = "createdAt", projection: dict[str, int] | None = None
         ) -> tuple[list[dict[str, Any]], str | None]:
    """One page newest first by ``date`` then ``_id``, and the cursor of the next page."""
    docs = list(db[collection].find(_page_filter(base, cursor, date), projection)
                .sort([(date, -1), ("_id", -1)]).limit(limit + 1))
    more = len(docs) > limit
    docs = docs[:limit]
    next_cursor = encode_cursor(docs[-1][date], docs[-1]["_id"]) if more and docs else None
    return docs, next_cursor


def wallet_history(db: Database, wallet_id: str, limit: int,
                   cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of ``wallet_id``'s transactions, newest first, and the next cursor (BadCursor).

    The records are settled jobs (``services/journal.py``), dated and paged by their
    journal date; cursors and items keep the bytes they had when records were their own
    documents (the date and id are the same values).
    """
    docs, next_cursor = page(db, journal.COLLECTION, {"parties": wallet_id}, limit, cursor, date=journal.DATE,
                             projection={"type": 1, "entries": 1, journal.DATE: 1})
    items = []
    for tx in map(journal.record, docs):
        mine = sum(e["amount"] for e in tx["entries"] if e["walletId"] == wallet_id)
        others = [e["walletId"] for e in tx["entries"]
                  if e["walletId"] != wallet_id and e["walletId"] not in SYSTEM_WALLETS]
        items.append({"txId": tx["_id"], "jobId": tx["_id"], "type": tx["type"], "amount": mine,
                      "counterpartyId": others[0] if others else None, "createdAt": iso(tx["createdAt"])})
    return items, next_cursor


def user_jobs(db: Database, owner_id: str, status: JobStatus | None, limit: int,
              cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of ``owner_id``'s jobs (optionally in one status), newest first, and the next cursor."""
    base: dict[str, Any] = {"ownerId": owner_id}
    if status:
        base["status"] = JobStatus(status)
    return page(db, "jobs", base, limit, cursor)


def subscription_view(sub: dict[str, Any]) -> dict[str, Any]:
    return {"subscriptionId": sub["_id"], "creatorId": sub["creatorId"], "subscriberId": sub["subscriberId"],
            "status": sub["status"], "expiresAt": iso(sub["expiresAt"]), "autoRenew": sub["autoRenew"],
            "price": sub["price"], "periodDays": sub["periodDays"], "renewals": sub.get("renewals", 0)}


def incoming_credits(db: Database, wallet_id: str, partitions: int) -> int:
    """Credits settled for ``wallet_id`` that its owner partition has not applied yet.

    Bounded by the owner's unapplied credits (applied within a batch of arriving), never
    by history: one range of the ``inbound`` index.
    """
    owner = partition_of(wallet_id, partitions)
    total = 0
    # Filtered here, not by ``amounts.walletId``: with it some planners (SecantusDB's)
    # leave the index for a collection scan; the range itself is small.
    for credit in db.credits.find({"to": owner, "applied": False}, {"amounts": 1}):
        total += sum(row["amount"] for row in credit["amounts"] if row["walletId"] == wallet_id)
    return total


def audit_entry_of(db: Database, job_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The audit entry that vouches for a job and the job's record in it.

    Two point reads: the job's ``audit`` pointer, then ``(partition, seq)`` on the
    chain's unique index. ``None`` for a job that is not terminal yet.
    """
    job = db.jobs.find_one({"_id": job_id}, {"audit": 1})
    pointer = (job or {}).get("audit")
    if not pointer:
        return None
    entry = db.auditlogs.find_one({"partition": pointer["partition"], "seq": pointer["seq"]})
    if entry is None:
        return None
    if "jobs" not in entry:  # a per-job entry written before audit blocks
        return entry, entry
    record = next((r for r in entry["jobs"] if r["jobId"] == job_id), None)
    return None if record is None else (entry, record)
