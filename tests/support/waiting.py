"""The one way tests wait: :func:`wait_for` a condition, :func:`wait_drained` for settlement.

Nothing here sleeps a fixed time; both poll and fail with a message naming what
did not happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pymongo.database import Database

T = TypeVar("T")

TERMINAL = ("settled", "failed")


def wait_for(probe: Callable[[], T], timeout: float = 15.0, *, poll: float = 0.1, what: str = "condition",
             fail: bool = True, ignore: tuple[type[BaseException], ...] = ()) -> T | None:
    """Poll ``probe`` until it returns something truthy and return that value.

    After ``timeout`` seconds: raise ``AssertionError`` naming ``what``, or, with
    ``fail=False``, return ``None`` (for tests that count or tolerate misses).
    Exceptions of the ``ignore`` types count as "not yet" (probes of a store under attack).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            if fail:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            return None
        time.sleep(poll)


def wait_drained(db: Database, *, job_ids: Iterable[str] | None = None, timeout: float = 180.0,
                 poll: float = 0.1, kick: Callable[[], Any] | None = None,
                 ignore: tuple[type[BaseException], ...] = ()) -> float:
    """Wait until settlement is at rest; return the seconds it took.

    At rest means: no job queued (with ``job_ids``: each of those jobs stored and
    terminal) and every deferred credit (``db.credits`` with ``applied: false``)
    applied, so balances can be compared with the ledger. The default ``timeout`` is
    generous: the suites share two cores with the stores and the workers. ``kick`` is called about
    once a second while waiting (suites without beat ring the owners of credits
    themselves); ``ignore`` as in :func:`wait_for`.
    """
    ids = sorted(set(job_ids)) if job_ids is not None else None
    started = time.monotonic()
    next_kick = started + 1.0

    def pending() -> tuple[int, int]:
        if ids is None:
            jobs = db.jobs.count_documents({"status": "queued"}, limit=1)
        else:  # a job not stored yet (a renewal the tick has yet to insert) counts as pending
            jobs = len(ids) - db.jobs.count_documents({"_id": {"$in": ids}, "status": {"$in": list(TERMINAL)}})
        return jobs, db.credits.count_documents({"applied": False}, limit=1)

    while True:
        try:
            if pending() == (0, 0):
                return time.monotonic() - started
        except ignore:
            pass
        now = time.monotonic()
        if now - started > timeout:
            if ids is None:
                jobs = db.jobs.count_documents({"status": "queued"})
            else:
                jobs = len(ids) - db.jobs.count_documents({"_id": {"$in": ids}, "status": {"$in": list(TERMINAL)}})
            credits = db.credits.count_documents({"applied": False})
            what = "queued" if ids is None else f"of {len(ids)} not terminal"
            raise AssertionError(f"{jobs} job(s) {what}, {credits} credit(s) unapplied after {timeout}s")
        if kick is not None and now > next_kick:
            kick()
            next_kick = now + 1.0
        time.sleep(poll)
