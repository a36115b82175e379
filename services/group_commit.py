"""Group commit at the door (issue 24, lever 2): the jobs of one linger, one ``insert_many``.

A web process accepting many requests at once pays the store's per-call cost once per
batch instead of once per request, as Kafka producers (``linger.ms``) and TigerBeetle
clients do. :meth:`GroupCommit.insert` has the contract of ``db.jobs.insert_one``: it
returns once THIS job is acknowledged and raises what ``insert_one`` would have raised
for it (``DuplicateKeyError`` for a key another job holds, ``WriteError``, the
batch's network error...: ``services.jobs.insert_each`` maps them), so
``services.jobs.accept_job`` keeps its replay, mismatch and unknown-outcome rules per
request unchanged.

Leader, not flusher thread: the first request to find no open batch opens one, waits
the linger (or until the batch is full), writes it and hands every member its own
outcome; the others wait on an event. While a batch is written the next one fills
behind it with its own leader. Nothing runs between requests, so there is nothing to
start after gunicorn's fork and nothing to drain at shutdown (a batch is always
written by one of its own requests), and it is the same code under gevent (events and
locks are monkey-patched: a waiting request is a parked greenlet) and under threads
(Flask's test client, a threaded server).

Bounds: at most ``max_batch`` jobs per write; at most ``max_waiting`` requests inside
batches per process (beyond, ``insert`` returns False and the request inserts alone,
as with the linger off); a member
waits at most ``wait_timeout`` for its leader and then gets a ``NetworkTimeout``, an
unknown outcome (503, retry with the same key: the key index replays or refuses).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymongo.database import Database
from pymongo.errors import NetworkTimeout

from infra import metrics
from services.jobs import Ringer, insert_each, ring_safely

log = logging.getLogger("purser.group_commit")

WAITING_PER_BATCH = 8  # max_waiting defaults to this many full batches
WAIT_TIMEOUT_SECONDS = 10.0


@dataclass(eq=False)
class _Member:
    job: dict[str, Any]
    ring: Ringer
    request_id: str | None
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


@dataclass(eq=False)
class _Batch:
    opened: float = field(default_factory=time.monotonic)
    members: list[_Member] = field(default_factory=list)
    full: threading.Event = field(default_factory=threading.Event)


# Writes a batch: per job, the exception its own insert would have raised, or None.
Write = Callable[[list[dict[str, Any]]], list[BaseException | None]]


class GroupCommit:
    """The batcher of one process and one database (:func:`for_process`)."""

    def __init__(self, write: Write, *, linger: float, max_batch: int, max_waiting: int | None = None,
                 wait_timeout: float = WAIT_TIMEOUT_SECONDS) -> None:
        self.write = write
        self.linger = linger
        self.max_batch = max(1, max_batch)
        self.max_waiting = max_waiting if max_waiting is not None else WAITING_PER_BATCH * self.max_batch
        self.wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._open: _Batch | None = None
        self._waiting = 0

    def insert(self, job: dict[str, Any], ring: Ringer, request_id: str | None = None) -> bool:
        """Store ``job`` in the next batch and ring its partition; raises as ``insert_one`` would.

        False: too many requests are waiting already, the caller inserts the job itself.
        """
        member = _Member(job, ring, request_id)
        batch, lead = self._join(member)
        if batch is None:
            metrics.record_accept_overflow()
            return False
        try:
            if lead:
                self._lead(batch)
            elif not member.done.wait(self.wait_timeout):
                raise NetworkTimeout(f"group commit: no acknowledgement within {self.wait_timeout:g} s; "
                                     "the job may or may not be stored")
        finally:
            with self._lock:
                self._waiting -= 1
        if member.error is not None:
            raise member.error
        return True

    def waiting(self) -> int:
        with self._lock:
            return self._waiting

    def _join(self, member: _Member) -> tuple[_Batch | None, bool]:
        with self._lock:
            if self._waiting >= self.max_waiting:
                return None, False
            self._waiting += 1
            batch, lead = self._open, self._open is None
            if batch is None:
                batch = self._open = _Batch()
            batch.members.append(member)
            if len(batch.members) >= self.max_batch:
                self._open = None  # closed to newcomers: its leader writes it now
                batch.full.set()
            return batch, lead

    def _lead(self, batch: _Batch) -> None:
        batch.full.wait(self.linger)
        with self._lock:
            if self._open is batch:
                self._open = None
            members = list(batch.members)
        lingered = time.monotonic() - batch.opened
        try:
            for member, error in zip(members, self.write([m.job for m in members]), strict=True):
                member.error = error
        except BaseException as exc:  # noqa: BLE001 - the write itself broke: nobody may wait forever
            for member in members:
                member.error = member.error or exc
            raise
        finally:
            for member in members:
                member.done.set()
        metrics.record_accept_batch(len(members), lingered)
        _ring_once(members)


def _ring_once(members: list[_Member]) -> None:
    """One doorbell per partition of the acknowledged jobs, with the first request's id."""
    rung: set[tuple[int, int]] = set()
    for member in members:
        partition = member.job["partition"]
        if member.error is None and (id(member.ring), partition) not in rung:
            rung.add((id(member.ring), partition))
            ring_safely(member.ring, partition, member.request_id, member.job["_id"])


_group: GroupCommit | None = None
_group_key: tuple[Any, ...] | None = None
_group_lock = threading.Lock()


def for_process(db: Database, *, linger_ms: float, max_batch: int) -> GroupCommit:
    """This process's batcher for ``db`` (a new one after fork, a new client or new settings)."""
    global _group, _group_key
    # id(): clients compare equal by address; the batcher keeps its client alive, so the id is not reused.
    key = (os.getpid(), id(db.client), db.name, linger_ms, max_batch)
    group = _group
    if group is not None and _group_key == key:
        return group
    with _group_lock:
        if _group is None or _group_key != key:
            # An old batcher's open batches are written by their own leaders.
            _group = GroupCommit(lambda jobs: insert_each(db, jobs), linger=linger_ms / 1000.0, max_batch=max_batch)
            _group_key = key
        return _group
