"""Each partition's backlog: published by whoever reads the store, read by the web tier.

Accepting never asks the store whether a partition is overloaded (issue 22). After
every settlement batch the settler publishes its partition's queued count, the age of
its oldest queued job and its recent drain rate into one Redis hash; the sweeper
publishes every partition on its tick, so a partition nobody settles is still seen.
Each web process keeps a copy at most ``REFRESH_SECONDS`` old (one HGETALL) and
refuses a new job for a partition whose queued jobs exceed what it drains in
``BACKLOG_MAX_SECONDS`` (never less than ``BACKLOG_MIN_JOBS``), or whose oldest queued
job has already waited that long: latency stays bounded under overload instead of
growing with the queue.

Redis being away, a missing or stale record all mean "unknown": accept. The limit
protects latency; the durable job and the sweeper protect money, with or without it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

log = logging.getLogger("purser.backlog")

KEY = "purser:backlog"
REFRESH_SECONDS = 0.5  # how old a web process's copy may be
STALE_SECONDS = 60.0  # a record this old says nothing: no settler and no sweeper ran
RATE_WEIGHT = 0.5  # weight of the newest sample in the drain-rate average
RATE_WINDOW = 2.0  # seconds of uninterrupted backlog one rate sample spans, at least
RETRY_AFTER_MIN, RETRY_AFTER_MAX = 1, 30
COUNT_CAP = 100_000  # the settler's count stops here: above it the answer is "full" anyway


@dataclass(frozen=True)
class Load:
    """One partition's backlog as last observed."""

    partition: int
    queued: int
    oldest_age: float  # seconds, of the oldest queued job at ``at``
    rate: float  # jobs/s the partition drained while it had a backlog; 0 = not measured yet
    at: float  # Unix time of the observation
    drained_at: float = 0.0  # Unix time of the last observation by a settler (0 = never)
    window_start: float = 0.0  # the rate's open measuring window (0 = none: the queue was empty)
    window_settled: int = 0  # jobs settled since window_start

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Load:
        data = json.loads(raw)
        return cls(int(data["partition"]), int(data["queued"]), float(data["oldest_age"]),
                   float(data["rate"]), float(data["at"]), float(data.get("drained_at", 0.0)),
                   float(data.get("window_start", 0.0)), int(data.get("window_settled", 0)))


@dataclass(frozen=True)
class Limits:
    max_seconds: float  # 0 = no limit
    min_jobs: int

    @property
    def enabled(self) -> bool:
        return self.max_seconds > 0

    def jobs(self, load: Load) -> int:
        """The most jobs the partition may hold: what it drains in ``max_seconds``, or the floor."""
        return max(self.min_jobs, int(load.rate * self.max_seconds))


def limits(settings: Any) -> Limits:
    """The limits of ``settings`` (``BACKLOG_MAX_SECONDS``, ``BACKLOG_MIN_JOBS``)."""
    return Limits(settings.backlog_max_seconds, settings.backlog_min_jobs)


def _average(prev_rate: float, sample: float) -> float:
    return sample if prev_rate <= 0 else RATE_WEIGHT * sample + (1 - RATE_WEIGHT) * prev_rate


def after_batch(prev: Load | None, partition: int, settled: int, busy_seconds: float,
                queued: int, oldest_age: float, now: float) -> Load:
    """The load a settler publishes after committing a batch of ``settled`` jobs.

    The rate is measured on the wall clock over a window of at least ``RATE_WINDOW``
    seconds during which the partition never ran empty: jobs settled in it over its
    length, time waiting for a free process included (a queued job lives through that
    too). A batch that leaves the queue empty closes the window; the time until the
    next backlog is never counted (a partition that keeps up says nothing about its
    capacity). Until a first window closes, the batch's own rate (an upper bound) seeds
    the estimate.
    """
    assert settled >= 0 and busy_seconds >= 0 and queued >= 0
    rate = prev.rate if prev is not None else 0.0
    if rate <= 0 and settled > 0 and busy_seconds > 0:
        rate = settled / busy_seconds
    start, counted = _window(prev, settled, now)
    if start > 0 and now - start >= RATE_WINDOW:
        rate = _average(prev.rate if prev is not None else 0.0, counted / (now - start))
        start, counted = now, 0
    if queued == 0:
        start, counted = 0.0, 0
    return Load(partition, queued, oldest_age, rate, now, drained_at=now, window_start=start,
                window_settled=counted)


def _window(prev: Load | None, settled: int, now: float) -> tuple[float, int]:
    """The measuring window after this batch: continued when it was open, else opened now."""
    if prev is not None and prev.window_start > 0:
        return prev.window_start, prev.window_settled + settled
    return now, 0


def observed(prev: Load | None, partition: int, queued: int, oldest_age: float, now: float,
             silent_after: float) -> Load:
    """The load the sweeper publishes: its count, the settlers' rate.

    A partition holding jobs whose settlers have published nothing for ``silent_after``
    seconds is not draining: its rate halves at every such tick, so with no worker the
    limit falls to the floor and accepting stops once the floor is reached.
    """
    if prev is None:
        return Load(partition, queued, oldest_age, 0.0, now)
    rate = prev.rate
    if queued > 0 and now - prev.drained_at > silent_after:
        rate /= 2
    return replace(prev, queued=queued, oldest_age=oldest_age, rate=rate, at=now)


def waited(load: Load, now: float) -> float:
    """How long the oldest job seen queued has waited by ``now``, if it is still queued.

    The count is read right after the partition's own batch, when its queue is shortest,
    and ages until its next turn; the oldest job's wait keeps growing in the meantime, so
    a partition whose turns come further apart than ``BACKLOG_MAX_SECONDS`` is over its
    limit whatever its count said.
    """
    return load.oldest_age + max(0.0, now - load.at) if load.queued > 0 else 0.0


def retry_after(load: Load, limits: Limits) -> int:
    """Seconds until the partition is expected back under its limit (bounded both ways)."""
    excess = load.queued - limits.jobs(load) + 1
    wait = excess / load.rate if load.rate > 0 else limits.max_seconds
    return int(min(RETRY_AFTER_MAX, max(RETRY_AFTER_MIN, math.ceil(wait))))


# ------------------------------------------------------------------------ Redis I/O


def publish(redis: Any, *loads: Load) -> None:
    if loads:
        redis.hset(KEY, mapping={str(load.partition): load.to_json() for load in loads})


def read(redis: Any, partition: int) -> Load | None:
    raw = redis.hget(KEY, str(partition))
    return Load.from_json(raw) if raw else None


def read_all(redis: Any) -> dict[int, Load]:
    loads = {}
    for field, raw in (redis.hgetall(KEY) or {}).items():
        try:
            loads[int(field)] = Load.from_json(raw)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed backlog record", extra={"field": str(field)})
    return loads


@dataclass(frozen=True)
class Shed:
    """A refusal: the partition is over its limit."""

    partition: int
    queued: int
    limit: int
    retry_after: int


class Gate:
    """A web process's view of the published backlogs, refreshed at most every ``REFRESH_SECONDS``.

    ``check`` costs no I/O between refreshes; a refresh is one HGETALL, done by the
    first request that finds the copy old (the others use the old copy meanwhile).
    """

    def __init__(self, redis: Callable[[], Any], limits: Limits, clock: Callable[[], float] = time.time) -> None:
        self._redis = redis
        self.limits = limits
        self._clock = clock
        self._loads: dict[int, Load] = {}
        self._fetched = -math.inf
        self._lock = threading.Lock()

    def check(self, partition: int) -> Shed | None:
        if not self.limits.enabled:
            return None
        now = self._clock()
        self._refresh(now)
        load = self._loads.get(partition)
        if load is None or now - load.at > STALE_SECONDS:
            return None
        limit = self.limits.jobs(load)
        # No rate measured yet (a cold partition): the count says nothing, only the age does.
        counted_full = load.rate > 0 and load.queued >= limit
        if not counted_full and waited(load, now) <= self.limits.max_seconds:
            return None
        return Shed(partition, load.queued, limit, retry_after(load, self.limits))

    def _refresh(self, now: float) -> None:
        if now - self._fetched < REFRESH_SECONDS or not self._lock.acquire(blocking=False):
            return
        try:
            self._fetched = now
            self._loads = read_all(self._redis())
        except Exception:  # noqa: BLE001 - unknown load: accept (the job is durable either way)
            log.warning("could not read the published backlog; accepting", exc_info=True)
            self._loads = {}
        finally:
            self._lock.release()
