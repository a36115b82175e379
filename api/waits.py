"""Waiting for a job to end (``GET /api/jobs/<id>`` with ``Prefer: wait=N``) without polling.

One :class:`WaitHub` per web process holds ONE Redis pub/sub subscription to the
settler's announcements (:mod:`infra.announce`) and a map job id -> waiting
requests. A waiting request registers an event, reads its job once, and if the job
is not terminal sleeps on the event until the announcement of its job (or its
deadline), then answers with the job as read from MongoDB after the announcement:
the hub reads all announced jobs that have waiters in this process in one query
per 25 ids and hands each waiter its document; a waiter woken by its deadline
reads its job itself, once. Nothing polls MongoDB, and under gunicorn's gevent
worker (the default, ``gunicorn.conf.py``) a sleeping request is a parked
greenlet, not a thread: thousands cost a few MiB.

Lost announcements cannot strand a waiter beyond its deadline: every time the
subscription is (re)established, all registered waiters are woken to read again
(anything published while it was down is covered by that read).

Concurrent waits are capped per user across all web processes
(``JOB_WAIT_MAX_PER_USER``, default 5) with a sorted set in Redis whose entries
expire at their wait's deadline, so a crashed process leaks nothing. A wait
beyond the cap (or when Redis cannot count it) is not refused: the request is
answered at once with the job as it is, without ``Preference-Applied`` (RFC 7240:
the preference was not honoured), exactly as a client sees a wait that timed out.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from api.app_settings import settings
from api.wait_slots import acquire_slot, cap_key, release_slots, waits_redis
from infra import announce
from infra.config import Settings
from infra.pubsub import Listener
from services.jobs import TERMINAL, jobs_by_ids
from services.store import process_db

log = logging.getLogger("purser.waits")



# --- metrics -------------------------------------------------------------------------------


def _waits_counter() -> Any:
    return announce.metric("purser_job_waits", "Counter",
                           "Requests with 'Prefer: wait', by how they ended: terminal (job ended in time), "
                           "timeout (deadline), capped (answered at once: over the per-user cap or Redis failed)",
                           labelnames=["outcome"])


def _reads_counter() -> Any:
    return announce.metric("purser_job_wait_store_reads", "Counter",
                           "MongoDB reads made for waiting requests after their first read: one per "
                           "announcement with local waiters, plus one per waiter that reads at its deadline")


def _active_gauge() -> Any:
    return announce.metric("purser_job_waits_active", "Gauge", "Requests waiting for their job right now",
                           multiprocess_mode="livesum")


def _lag_histogram() -> Any:
    return announce.metric("purser_job_wait_answer_lag_seconds", "Histogram",
                           "From the settler's announcement (just after the commit) to the waiting "
                           "request's answer being ready in the web process",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))


def _hub_counter() -> Any:
    return announce.metric("purser_job_wait_hub_events", "Counter",
                           "Announcement subscriber events: message, subscribed, error",
                           labelnames=["event"])


def _count(get: Callable[[], Any], *labels: str, amount: float = 1) -> None:
    try:
        metric = get()
        (metric.labels(*labels) if labels else metric).inc(amount)
    except Exception:  # noqa: BLE001 - metrics never break an answer
        log.debug("could not count", exc_info=True)


def _observe(get: Callable[[], Any], value: float) -> None:
    try:
        get().observe(max(0.0, value))
    except Exception:  # noqa: BLE001 - metrics never break an answer
        log.debug("could not observe", exc_info=True)


# --- the per-process hub ------------------------------------------------------------------


@dataclass(eq=False)
class Waiter:
    job_id: str
    event: threading.Event = field(default_factory=threading.Event)
    woken_at: float | None = None  # time.time() of the announcement that woke it
    job: dict[str, Any] | None = None  # the job as read from MongoDB after its announcement
    slot: tuple[str, str] | None = None  # (cap key, token) while it holds a wait slot
    slot_released: bool = False  # the hub gives slots back in bulk for the waiters it answers

    def wake(self, at: float | None = None, job: dict[str, Any] | None = None) -> None:
        if self.woken_at is None:
            self.woken_at = at
        if job is not None:
            self.job = job
        self.event.set()

    def take(self) -> dict[str, Any] | None:
        job, self.job = self.job, None
        return job


# Reads the announced jobs that have local waiters: {job id: document}.
Fetch = Callable[[list[str]], dict[str, dict[str, Any]]]
# Ids per read: SecantusDB's $in cost grows with the square of its length (loadtest/seed.py),
# and the waiters of a chunk answer while the next one is read.
FETCH_CHUNK = 25


def fetch_jobs(ids: list[str]) -> dict[str, dict[str, Any]]:
    """The jobs ``ids`` (one ``$in`` query; the hub passes at most FETCH_CHUNK ids)."""
    return jobs_by_ids(process_db(), ids)


class WaitHub:
    """One subscription to the announcements of one database, dispatching to local waiters.

    Uses ``threading`` only: under gevent's monkey patching the listener is a greenlet
    and the events are gevent events; under threads (tests with Flask's test client,
    a gthread worker) a daemon thread.
    """

    def __init__(self, redis_url: str, channel: str, fetch: Fetch | None = None) -> None:
        self.redis_url = redis_url
        self.channel = channel
        self.fetch = fetch
        self._waiters: dict[str, set[Waiter]] = {}
        self._lock = threading.Lock()
        # Anything announced before a (re)subscription is covered by one read of every
        # current waiter: no announcement can be lost unseen.
        self._listener = Listener(redis_url, channel, self._on_message, self.wake_all, what="announcement",
                                  on_event=lambda event: _count(_hub_counter, event), logger=log)
        self.subscribed = self._listener.subscribed

    @property
    def messages(self) -> int:
        return self._listener.messages

    # registry
    def register(self, job_id: str) -> Waiter:
        waiter = Waiter(job_id)
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(waiter)
        self._ensure_started()
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        with self._lock:
            group = self._waiters.get(waiter.job_id)
            if group is not None:
                group.discard(waiter)
                if not group:
                    del self._waiters[waiter.job_id]

    def waiting(self) -> int:
        with self._lock:
            return sum(len(group) for group in self._waiters.values())

    def dispatch(self, message: announce.Announcement) -> int:
        """Wake the local waiters of the announced jobs; the number of waiters.

        With a ``fetch``, the announced jobs that have waiters here are read from
        MongoDB in one query per FETCH_CHUNK ids, off the listener, and each waiter gets
        its document: a batch of 60 jobs is three reads per web process, not 60. Without one
        (or when it fails) the waiters are woken to read their job themselves.
        """
        with self._lock:
            targets = [w for job_id, _ in message.jobs for w in self._waiters.get(job_id, ())]
        if not targets:
            return 0
        if self.fetch is None:
            self._wake(targets, message.published_at, {})
        else:
            threading.Thread(target=self._fetch_and_wake, args=(targets, message.published_at),
                             name="purser-wait-fetch", daemon=True).start()
        return len(targets)

    def _fetch_and_wake(self, targets: list[Waiter], published_at: float) -> None:
        # Chunk by chunk, so the first waiters answer while the next chunk is read.
        by_job: dict[str, list[Waiter]] = {}
        for waiter in targets:
            by_job.setdefault(waiter.job_id, []).append(waiter)
        ids = list(by_job)
        for start in range(0, len(ids), FETCH_CHUNK):
            chunk = ids[start:start + FETCH_CHUNK]
            docs: dict[str, dict[str, Any]] = {}
            try:
                assert self.fetch is not None
                docs = self.fetch(chunk)
                _count(_reads_counter)
            except Exception:  # noqa: BLE001 - the waiters read for themselves
                log.warning("could not read announced jobs; waiters read them one by one", exc_info=True)
            self._wake([w for job_id in chunk for w in by_job[job_id]], published_at, docs)

    def _wake(self, targets: list[Waiter], published_at: float, docs: dict[str, dict[str, Any]]) -> None:
        # The waiters handed a terminal job answer now: their slots are given back here,
        # in one round trip after waking them, instead of one round trip each while
        # dozens of them answer at once.
        slots = []
        for waiter in targets:
            doc = docs.get(waiter.job_id)
            if doc is not None and doc.get("status") in TERMINAL and waiter.slot is not None:
                waiter.slot_released = True
                slots.append(waiter.slot)
            waiter.wake(published_at, doc)
        if slots:
            release_slots(self.redis_url, slots)

    def wake_all(self) -> None:
        with self._lock:
            targets = [w for group in self._waiters.values() for w in group]
        for waiter in targets:
            waiter.wake()

    # listener
    def _ensure_started(self) -> None:
        self._listener.start()

    def start(self) -> WaitHub:
        self._ensure_started()
        return self

    def stop(self) -> None:
        self._listener.stop()
        self.wake_all()

    def _on_message(self, data: bytes) -> None:
        decoded = announce.decode(data)
        if decoded is not None:
            self.dispatch(decoded)


_hub: WaitHub | None = None
_hub_key: tuple[int, str, str] | None = None
_hub_lock = threading.Lock()


def get_hub(settings: Settings) -> WaitHub:
    """This process's hub (a new one after fork or when the settings changed).

    Also called outside any app context (gunicorn's ``post_worker_init``): the caller
    passes the settings.
    """
    global _hub, _hub_key
    key = (os.getpid(), settings.redis_url, announce.channel(settings.mongodb_db))
    if _hub is not None and _hub_key == key:
        return _hub
    with _hub_lock:
        if _hub is None or _hub_key != key:
            if _hub is not None and _hub_key is not None and _hub_key[0] == os.getpid():
                _hub.stop()
            _hub = WaitHub(key[1], key[2], fetch_jobs)
            _hub_key = key
    return _hub


# --- one wait ---------------------------------------------------------------------------------

@dataclass
class WaitResult:
    job: dict[str, Any]
    applied: bool  # False: answered at once (cap reached, Redis failed): no Preference-Applied
    outcome: str  # terminal | timeout | capped | immediate
    woken_at: float | None = None


def wait_for_job(
    job_id: str,
    user_id: str,
    seconds: float,
    first_read: Callable[[], dict[str, Any]],
    reread: Callable[[], dict[str, Any] | None],
) -> WaitResult:
    """Wait up to ``seconds`` for job ``job_id`` to become terminal.

    ``first_read`` reads (and authorises) the job: it is called AFTER the waiter is
    registered, so an announcement made between that read and the sleep still wakes
    it. ``reread`` reads the job again, once after each wake-up (normally once).
    Exceptions of ``first_read`` (404) propagate.
    """
    deadline = time.monotonic() + seconds
    s = settings()
    hub = get_hub(s)
    waiter = hub.register(job_id)
    try:
        job = first_read()
        if job["status"] in TERMINAL:
            return WaitResult(job, True, "immediate")
        try:
            waiter.slot = acquire_slot(waits_redis(s.redis_url), cap_key(s.mongodb_db, user_id), seconds,
                                       s.job_wait_max_per_user)
        except Exception as exc:  # noqa: BLE001 - cannot count waits: do not hold the request
            log.warning("could not count a wait; answering at once",
                        extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
        if waiter.slot is None:
            _count(_waits_counter, "capped")
            return WaitResult(job, False, "capped")
        active = _active_gauge()
        active.inc()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    waiter.event.wait(remaining)
                # Cleared before reading: an announcement after this read sets it again.
                waiter.event.clear()
                fetched = waiter.take()  # read by the hub after this job's announcement
                if fetched is not None:
                    job = fetched
                else:
                    _count(_reads_counter)
                    job = reread() or job
                if job["status"] in TERMINAL:
                    _count(_waits_counter, "terminal")
                    if waiter.woken_at is not None:
                        _observe(_lag_histogram, time.time() - waiter.woken_at)
                    return WaitResult(job, True, "terminal", waiter.woken_at)
                if time.monotonic() >= deadline:
                    _count(_waits_counter, "timeout")
                    return WaitResult(job, True, "timeout", waiter.woken_at)
                # Woken by a (re)subscription, not by this job's announcement: sleep on.
        finally:
            active.dec()
            if not waiter.slot_released:
                release_slots(s.redis_url, [waiter.slot])
    finally:
        hub.unregister(waiter)
