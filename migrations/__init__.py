"""Numbered, reversible schema migrations for MongoDB.

Each file ``migrations/versions/NNNN_name.py`` defines ``up(db)`` and ``down(db)``.
Applied versions are recorded in the ``migrations`` collection, so ``up`` twice is a
no-op. Run with ``python -m migrations up|down [--to N]|status``.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType

from pymongo.database import Database

from migrations import versions


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    module: ModuleType


def discover() -> list[Migration]:
    found = []
    for info in pkgutil.iter_modules(versions.__path__):
        head, _, rest = info.name.partition("_")
        if not head.isdigit():
            continue
        module = importlib.import_module(f"migrations.versions.{info.name}")
        found.append(Migration(int(head), rest, module))
    found.sort(key=lambda m: m.number)
    numbers = [m.number for m in found]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError("two migrations share a number")
    return found


def applied(db: Database) -> set[int]:
    return {doc["_id"] for doc in db.migrations.find({}, {"_id": 1})}


def up(db: Database, to: int | None = None) -> list[int]:
    """Apply pending migrations in order (up to ``to``); return the numbers applied."""
    done = applied(db)
    ran = []
    for m in discover():
        if to is not None and m.number > to:
            break
        if m.number in done:
            continue
        m.module.up(db)
        db.migrations.insert_one({"_id": m.number, "name": m.name, "appliedAt": datetime.now(UTC)})
        ran.append(m.number)
    return ran


def down(db: Database, to: int = 0) -> list[int]:
    """Revert applied migrations above ``to``, newest first."""
    done = applied(db)
    ran = []
    for m in reversed(discover()):
        if m.number <= to or m.number not in done:
            continue
        m.module.down(db)
        db.migrations.delete_one({"_id": m.number})
        ran.append(m.number)
    return ran


def status(db: Database) -> list[tuple[int, str, bool]]:
    done = applied(db)
    return [(m.number, m.name, m.number in done) for m in discover()]
