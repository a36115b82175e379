"""Balances as of any instant: checkpoints folded from the audit chain, plus the entries since.

Settlement writes nothing for this. Every batch commits one audit block listing each
job's ledger entries, dated like its transactions; :func:`roll_up` (beat) walks the
blocks of every partition past its cursor in time windows and stores, for each wallet
that moved in a window, its running balance and held coins at the window's end
(``balance_checkpoints``), and adds the window to its month's platform totals
(``platform_months``). Windows end at month boundaries, so every month end of a moving
wallet has a checkpoint. All of one window is written in ONE transaction with the
advance of the watermark, guarded on its old value: a second beat or a restart mid-way
writes nothing twice.

:func:`balance_at` reads the nearest checkpoint at or before T (one index probe) and the
wallet's transactions after it up to T (``parties_settled``, ``services/journal.py``) and its payouts changed
since (``owner_updated``): the cost is bounded by the wallet's activity in one window
plus the roll-up's lag, never by its history.

Why a margin: a batch stamps its date before it commits. Only blocks dated at least
``margin`` ago are folded, longer than any transaction can live (MongoDB aborts older
ones), so no block can appear later inside a folded window.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from ledger.history import Totals, entries_sum, fold_record, held_change, platform_increments
from ledger.money import SYSTEM_WALLETS
from ledger.periods import MS, month_of
from ledger.timeutil import to_ms
from services import journal

log = logging.getLogger("purser.checkpoints")

STATE_ID = "balances"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BLOCKS_PER_STEP = 20  # audit blocks read per partition per window (bounds one transaction)


@dataclass
class RollupResult:
    windows: int = 0
    blocks: int = 0
    checkpoints: int = 0
    watermark: datetime | None = None
    late: int = 0  # blocks dated at or before a window already folded (clock skew between settlers)

    def as_dict(self) -> dict[str, Any]:
        return {"windows": self.windows, "blocks": self.blocks, "checkpoints": self.checkpoints,
                "watermark": self.watermark.isoformat() if self.watermark else None, "late": self.late}


@dataclass
class _Window:
    end: datetime
    blocks: list[dict[str, Any]] = field(default_factory=list)
    cursors: dict[str, int] = field(default_factory=dict)


def _state(db: Database) -> dict[str, Any]:
    return db.rollup_state.find_one({"_id": STATE_ID}) or {"_id": STATE_ID, "watermark": EPOCH, "cursors": {}}


def _pending(db: Database, partitions: int, cursors: dict[str, int]) -> dict[int, list[dict[str, Any]]]:
    out = {}
    for p in range(partitions):
        blocks = list(db.auditlogs.find({"partition": p, "seq": {"$gt": cursors.get(str(p), 0)}},
                                        {"jobs": 1, "seq": 1, "createdAt": 1})
                      .sort("seq", 1).limit(BLOCKS_PER_STEP))
        if blocks:
            out[p] = blocks
    return out


def _plan_window(pending: dict[int, list[dict[str, Any]]], horizon: datetime, cursors: dict[str, int]) -> _Window:
    """The next window: ends at the horizon, the month end of its earliest block, or before
    a partition's unread blocks (a full page), whichever comes first."""
    earliest = min(b["createdAt"] for blocks in pending.values() for b in blocks)
    end = min(horizon, month_of(earliest).last_instant)
    for blocks in pending.values():
        if len(blocks) == BLOCKS_PER_STEP:
            last = blocks[-1]["createdAt"]
            end = min(end, last - MS if last - MS >= earliest else last)
    window = _Window(end, cursors=dict(cursors))
    for p, blocks in pending.items():
        for block in blocks:
            if block["createdAt"] > end:
                break  # a partition's blocks are dated in sequence order: the rest come later
            window.blocks.append(block)
            window.cursors[str(p)] = block["seq"]
    return window


# How far back from T each probe for the latest checkpoint looks (then: without a bound).
# SecantusDB examines every index key of a range before it applies the sort's limit (explain:
# all the wallet's checkpoints before T for ``find_one(sort=at desc)``; real MongoDB reads
# one key), so an unbounded probe grows with the wallet's history. Widening windows bound
# the keys examined by the checkpoints of the first window that has one: with beat folding
# every minute, at most 60 for a wallet that moved in the hour before T.
PROBES = (timedelta(hours=1), timedelta(days=1), timedelta(days=32), timedelta(days=366))


def latest_checkpoint(db: Database, wallet_id: str, at: datetime) -> dict[str, Any] | None:
    """``wallet_id``'s newest checkpoint at or before ``at`` (milliseconds), or None."""
    for width in (*PROBES, None):
        bound: dict[str, Any] = {"$lt": at + MS}
        if width is not None:
            bound["$gt"] = at - width
        doc = db.balance_checkpoints.find_one({"walletId": wallet_id, "at": bound}, sort=[("at", -1)])
        if doc is not None:
            return doc
    return None


def _previous(db: Database, wallet_ids: list[str], before: datetime) -> dict[str, Totals]:
    out = {}
    for wallet_id in wallet_ids:
        doc = latest_checkpoint(db, wallet_id, before)
        out[wallet_id] = Totals(doc["balance"], doc["held"]) if doc else Totals()
    return out


def _write_window(db: Database, state: dict[str, Any], window: _Window, session: ClientSession) -> int:
    moved: dict[str, Totals] = {}
    months: dict[str, dict[str, int]] = {}
    for block in window.blocks:
        label = month_of(block["createdAt"]).label
        for record in block.get("jobs", ()):
            fold_record(record, moved)
            for key, value in platform_increments(record).items():
                months.setdefault(label, {})[f"kinds.{key}"] = months.get(label, {}).get(f"kinds.{key}", 0) + value
    wallets = sorted(w for w, t in moved.items() if t.balance or t.held or w in SYSTEM_WALLETS)
    totals = _previous(db, wallets, state["watermark"])
    ops = []
    for wallet_id in wallets:
        total = totals[wallet_id]
        total.add(moved[wallet_id].balance, moved[wallet_id].held)
        ops.append(UpdateOne({"_id": f"{wallet_id}:{int(window.end.timestamp() * 1000)}"},
                             {"$setOnInsert": {"walletId": wallet_id, "at": window.end, "balance": total.balance,
                                               "held": total.held}}, upsert=True))
    if ops:
        db.balance_checkpoints.bulk_write(ops, ordered=False, session=session)
    for label, inc in sorted(months.items()):
        db.platform_months.update_one({"_id": label}, {"$inc": inc}, upsert=True, session=session)
    res = db.rollup_state.update_one(
        {"_id": STATE_ID, "watermark": state["watermark"]},
        {"$set": {"watermark": window.end, "cursors": window.cursors}}, upsert=state["watermark"] == EPOCH,
        session=session)
    if res.matched_count + (1 if res.upserted_id is not None else 0) != 1:
        raise _Moved
    return len(ops)


class _Moved(Exception):
    """Another roll-up advanced the watermark first: this window is already folded."""


def roll_up(db: Database, *, partitions: int, now: datetime, margin: timedelta, max_windows: int = 200) -> RollupResult:
    """Fold audit blocks dated up to ``now - margin`` into checkpoints, window by window."""
    horizon = to_ms(now) - margin
    result = RollupResult()
    for _ in range(max_windows):
        state = _state(db)
        if state["watermark"] >= horizon:
            break
        pending = _pending(db, partitions, state["cursors"])
        if not pending or min(b["createdAt"] for bs in pending.values() for b in bs) > horizon:
            window = _Window(horizon, cursors=dict(state["cursors"]))
        else:
            window = _plan_window(pending, horizon, state["cursors"])
        result.late += sum(1 for b in window.blocks if b["createdAt"] <= state["watermark"])
        written = {"n": 0}

        def body(session: ClientSession, window: _Window = window, state: dict[str, Any] = state,
                 written: dict[str, int] = written) -> None:
            written["n"] = _write_window(db, state, window, session)

        try:
            with db.client.start_session() as session:
                session.with_transaction(body)
        except (_Moved, DuplicateKeyError):  # a concurrent roll-up folded this window first
            continue
        result.windows += 1
        result.blocks += len(window.blocks)
        result.checkpoints += written["n"]
        result.watermark = window.end
    if result.late:
        log.warning("audit blocks dated inside an already folded window", extra={"late": result.late})
    return result


# --- reads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class AsOf:
    at: datetime
    balance: int
    held: int
    debt: int
    documents: int  # documents read to answer (the cost the benchmark reports)


def balance_at(db: Database, wallet_id: str, at: datetime) -> AsOf:
    """``wallet_id``'s ledger balance, held coins and debt at ``at`` (inclusive, milliseconds)."""
    at = to_ms(at)
    doc = latest_checkpoint(db, wallet_id, at)
    total = Totals(doc["balance"], doc["held"]) if doc else Totals()
    since = doc["at"] if doc else None
    window: dict[str, Any] = {"$lt": at + MS}
    if since is not None:
        window["$gt"] = since
    # Exclusive upper bounds: SecantusDB drops keys equal to an inclusive bound in some
    # compound ranges (services/subscriptions._until); identical for millisecond dates.
    txs = list(journal.find(db, {"parties": wallet_id, "createdAt": window}, ["entries"]))
    total.add(balance=entries_sum(txs, wallet_id))
    changed: dict[str, Any] = {"userId": wallet_id}
    if since is not None:
        changed["updatedAt"] = {"$gt": since}
    payouts = list(db.payouts.find(changed, {"amount": 1, "createdAt": 1, "events": 1}))
    total.add(held=sum(held_change(p, since, at) for p in payouts))
    return AsOf(at, total.balance, total.held, total.debt, (doc is not None) + len(txs) + len(payouts))


def watermark(db: Database) -> datetime:
    """How far the checkpoints reach (every block dated at or before it is folded)."""
    return _state(db)["watermark"]
