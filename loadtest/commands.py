"""Counting what reaches the store: a pymongo command listener (client side) and ``top`` (server side).

:class:`CommandCounter` sees every command one ``MongoClient`` sends: per command
name and collection, how many commands, how many documents they carried (inserts,
update and delete statements) and how long they took as the client saw it. The
benchmark gives the in-process settle loop a client with this listener, so the
documents a batch writes are counted from the wire, not from the code's own tally.

Processes the benchmark cannot instrument (gunicorn workers) are counted with the
store's ``top`` command (per namespace and operation kind, per command; a real
``mongod`` answers it too): :func:`top_snapshot` before and after, :func:`top_delta`.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pymongo import MongoClient, monitoring

# Commands that write, and the field listing their documents / statements.
WRITE_FIELDS = {"insert": "documents", "update": "updates", "delete": "deletes"}
READ_COMMANDS = {"find", "getMore", "aggregate", "count", "distinct"}
# Bookkeeping of sessions and transactions: neither reads nor writes documents.
TXN_COMMANDS = {"commitTransaction", "abortTransaction", "endSessions"}


@dataclass
class CommandTally:
    commands: Counter[str] = field(default_factory=Counter)  # "insert jobs" -> commands
    documents: Counter[str] = field(default_factory=Counter)  # "insert jobs" -> documents/statements
    micros: Counter[str] = field(default_factory=Counter)  # "insert jobs" -> client-side microseconds
    failed: int = 0

    def written(self) -> int:
        """Documents carried by insert, update and delete commands (statements, not matches)."""
        return sum(n for key, n in self.documents.items() if key.split(" ", 1)[0] in WRITE_FIELDS)

    def reads(self) -> int:
        return sum(n for key, n in self.commands.items() if key.split(" ", 1)[0] in READ_COMMANDS)

    def written_by_collection(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for key, n in self.documents.items():
            name, _, coll = key.partition(" ")
            if name in WRITE_FIELDS:
                out[coll] += n
        return dict(out.most_common())

    def seconds(self) -> float:
        return sum(self.micros.values()) / 1e6

    def as_dict(self) -> dict[str, Any]:
        return {"commands": dict(self.commands.most_common()), "documents": dict(self.documents.most_common()),
                "ms": {k: round(v / 1000, 1) for k, v in self.micros.most_common()}, "failed": self.failed}


class CommandCounter(monitoring.CommandListener):
    """Thread-safe tally of the commands of the clients it listens to; :meth:`take` resets it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tally = CommandTally()
        self._keys: dict[tuple[int, int], str] = {}  # (connection id hash, request id) -> key

    @staticmethod
    def _key(event: monitoring.CommandStartedEvent) -> str:
        name = event.command_name
        target = event.command.get(name)
        if name == "getMore":
            target = event.command.get("collection")
        return f"{name} {target}" if isinstance(target, str) else name

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        key = self._key(event)
        docs = len(event.command.get(WRITE_FIELDS[event.command_name], ())) \
            if event.command_name in WRITE_FIELDS else 0
        with self._lock:
            self._keys[(hash(event.connection_id), event.request_id)] = key
            self._tally.commands[key] += 1
            if docs:
                self._tally.documents[key] += docs

    def _finish(self, event: Any, failed: bool) -> None:
        with self._lock:
            key = self._keys.pop((hash(event.connection_id), event.request_id), event.command_name)
            self._tally.micros[key] += event.duration_micros
            if failed:
                self._tally.failed += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._finish(event, False)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._finish(event, True)

    def take(self) -> CommandTally:
        """The tally so far; counting starts again from zero."""
        with self._lock:
            tally, self._tally = self._tally, CommandTally()
        return tally


def counting_client(uri: str, counter: CommandCounter, **kwargs: Any) -> MongoClient:
    """A client like ``infra.mongo``'s (tz-aware dates) whose commands ``counter`` sees."""
    return MongoClient(uri, tz_aware=True, event_listeners=[counter], appname="purser-bench", **kwargs)


# ------------------------------------------------------------------------------- server side

TOP_KINDS = ("insert", "update", "remove", "queries", "getmore", "commands")


def top_snapshot(client: MongoClient, database: str) -> dict[str, dict[str, int]]:
    """``{collection: {insert, update, remove, queries, getmore, commands}}`` counts of ``database``."""
    totals = client.admin.command("top")["totals"]
    prefix = database + "."
    out: dict[str, dict[str, int]] = {}
    for ns, entry in totals.items():
        if not ns.startswith(prefix) or not isinstance(entry, dict):
            continue
        out[ns[len(prefix):]] = {kind: int(entry.get(kind, {}).get("count", 0)) for kind in TOP_KINDS}
    return out


def top_delta(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Per collection and kind, what happened between two snapshots (zero rows left out)."""
    delta: dict[str, dict[str, int]] = {}
    for coll, kinds in after.items():
        row = {k: v - before.get(coll, {}).get(k, 0) for k, v in kinds.items()}
        row = {k: v for k, v in row.items() if v}
        if row:
            delta[coll] = row
    return delta


def per_request(delta: dict[str, dict[str, int]], requests: int) -> dict[str, Any]:
    """Writes and reads per request from a :func:`top_delta`, with the per-collection breakdown."""
    if not requests:
        return {"requests": 0}
    writes = sum(r.get(k, 0) for r in delta.values() for k in ("insert", "update", "remove"))
    reads = sum(r.get(k, 0) for r in delta.values() for k in ("queries", "getmore"))
    other = sum(r.get("commands", 0) for r in delta.values())
    return {
        "requests": requests,
        "writes_per_request": round(writes / requests, 3),
        "reads_per_request": round(reads / requests, 3),
        "other_commands_per_request": round(other / requests, 3),
        "by_collection_per_request": {coll: {k: round(v / requests, 3) for k, v in row.items()}
                                      for coll, row in sorted(delta.items())},
    }
