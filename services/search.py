"""The console's search box: a user by e-mail or id, a job, a payout, a provider transaction id.

Every probe is a point read on ``_id`` or on a unique index (``users.email_unique``,
``jobs.providerTxId_unique``, ``services/journal.py``), plus one bounded range for an e-mail prefix,
so a search costs a handful of index reads whatever the history.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymongo.database import Database

from ledger.money import is_user_id
from services import journal
from services.users import normalise_email

MAX_QUERY = 256
PREFIX_HITS = 20
# Above every character an e-mail address may hold: the end of a prefix range.
_PREFIX_END = "\U0010ffff"


@dataclass(frozen=True)
class Hit:
    kind: str  # user, job, payout
    id: str
    label: str  # what the operator recognises it by (e-mail, job type and status, ...)


def _by_id(db: Database, text: str) -> list[Hit]:
    hits = []
    user = db.users.find_one({"_id": text}, {"email": 1, "role": 1})
    if user is not None:
        hits.append(Hit("user", text, f"{user['email']} ({user['role']})"))
    job = db.jobs.find_one({"_id": text}, {"type": 1, "status": 1})
    if job is not None:
        hits.append(Hit("job", text, f"{job['type']} job, {job['status']}"))
    payout = db.payouts.find_one({"_id": text}, {"status": 1, "amount": 1})
    if payout is not None:
        hits.append(Hit("payout", text, f"payout of {payout['amount']}, {payout['status']}"))
    return hits


def _by_email(db: Database, text: str) -> list[Hit]:
    prefix = normalise_email(text)
    users = db.users.find({"email": {"$gte": prefix, "$lt": prefix + _PREFIX_END}}, {"email": 1, "role": 1},
                          hint="email_unique").sort("email", 1).limit(PREFIX_HITS)
    return [Hit("user", u["_id"], f"{u['email']} ({u['role']})") for u in users]


def _by_provider_tx(db: Database, text: str) -> list[Hit]:
    tx = journal.find_one(db, {"providerTxId": text}, ["type"])
    return [] if tx is None else [Hit("job", tx["_id"], f"{tx['type']} for provider transaction {text}")]


def search(db: Database, query: str) -> list[Hit]:
    """What ``query`` names: ids first, then provider transactions, then e-mails starting with it."""
    text = query.strip()[:MAX_QUERY]
    if not text:
        return []
    hits = _by_id(db, text) if is_user_id(text) else []
    hits += _by_provider_tx(db, text)
    if not is_user_id(text):
        hits += _by_email(db, text)
    return hits
