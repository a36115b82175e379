"""Ledger records for tests, in the shape they had as ``transactions`` documents.

A settled job is its own ledger record (``services/journal.py``); tests ask in the old
names (``txId``, ``jobId``, ``createdAt``, ``partition``, ``auditSeq``) and read the old keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pymongo.database import Database

from services import journal


def _fields(projection: Mapping[str, Any] | Iterable[str] | None) -> list[str] | None:
    return None if projection is None else list(projection)


def ledger_records(db: Database, query: Mapping[str, Any] | None = None,
                   projection: Mapping[str, Any] | Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The ledger records matching ``query`` (record names), oldest job id first."""
    return list(journal.find(db, query or {}, _fields(projection), sort=[("_id", 1)]))


def ledger_record(db: Database, query: Mapping[str, Any],
                  projection: Mapping[str, Any] | Iterable[str] | None = None) -> dict[str, Any] | None:
    found = ledger_records(db, query, projection)
    return found[0] if found else None


def count_records(db: Database, query: Mapping[str, Any] | None = None) -> int:
    return journal.ledger(db).count_documents(journal.stored_filter(query or {}))
