"""Announcements of terminal jobs: the settler tells waiting clients their job is done.

After a settlement batch commits, :func:`announce_batch` publishes the ids of the
jobs it settled or failed on one Redis pub/sub channel (:func:`channel`). Every web
process keeps one subscription to it (``api.waits``) and wakes the requests waiting
on those ids, which then read their job from MongoDB once. Nothing polls.

An announcement is a hint, never the truth: it is sent only after the commit, a
waiter always re-reads MongoDB, and a lost announcement (Redis down, a web process
reconnecting) only means the waiter reads at its deadline instead. So publishing
must never affect settlement: :func:`announce_batch` never raises, uses its own
client with a short timeout, and after a failure skips publishing for
:data:`BREAKER_SECONDS` (a WARNING and ``purser_announce_failures_total`` record it)
so an unreachable Redis costs a batch at most one short timeout per pause.

Message (JSON, compact): ``{"v": 1, "t": <unix seconds at publish>, "j": [[jobId, "s"|"f"], ...]}``,
at most :data:`MAX_IDS_PER_MESSAGE` jobs per message (about 30 bytes per job).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from infra.config import get_settings

log = logging.getLogger("purser.announce")

VERSION = 1
MAX_IDS_PER_MESSAGE = 500
PUBLISH_TIMEOUT_SECONDS = 0.25
BREAKER_SECONDS = 5.0
_STATUS_CODE = {"settled": "s", "failed": "f"}
_CODE_STATUS = {v: k for k, v in _STATUS_CODE.items()}


def channel(mongodb_db: str | None = None) -> str:
    """The pub/sub channel of one Purser database.

    Pub/sub ignores Redis database numbers, so stacks sharing a Redis server (tests,
    staging next to development) are told apart by their MongoDB database name.
    """
    return f"purser:jobs:terminal:{mongodb_db or get_settings().mongodb_db}"


@dataclass(frozen=True)
class Announcement:
    published_at: float
    jobs: tuple[tuple[str, str], ...]  # (job id, "settled" | "failed")


def encode(jobs: Iterable[tuple[str, str]], published_at: float | None = None) -> str:
    body = {"v": VERSION, "t": round(published_at if published_at is not None else time.time(), 6),
            "j": [[job_id, _STATUS_CODE[status]] for job_id, status in jobs]}
    return json.dumps(body, separators=(",", ":"))


def decode(raw: bytes | str) -> Announcement | None:
    """The announcement in ``raw``, or None when it is not one (never raises)."""
    try:
        body = json.loads(raw)
        if not isinstance(body, dict) or body.get("v") != VERSION:
            return None
        jobs = tuple((str(job_id), _CODE_STATUS[code]) for job_id, code in body["j"])
        return Announcement(float(body["t"]), jobs)
    except (ValueError, TypeError, KeyError):
        return None


def terminal_jobs(batch: Any) -> list[tuple[str, str]]:
    """(job id, status) of every job a committed ``services.batch_runner.BatchResult`` decided."""
    return [(str(job["_id"]), "settled" if outcome.ok else "failed") for job, outcome in batch.outcomes]


# --- publishing (settler side) ------------------------------------------------------------

_client: redis.Redis | None = None
_client_key: tuple[int, str] | None = None
_open_until = 0.0
_lock = threading.Lock()


def _redis() -> redis.Redis:
    global _client, _client_key
    key = (os.getpid(), get_settings().redis_url)
    if _client is None or _client_key != key:
        _client = redis.Redis.from_url(key[1], socket_timeout=PUBLISH_TIMEOUT_SECONDS,
                                       socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS)
        _client_key = key
    return _client


_metrics: dict[str, Any] = {}


def metric(name: str, kind: str, documentation: str, **options: Any) -> Any:
    """A Prometheus metric created on first use (after the process chose its multi-process
    directory, as ``infra.metrics`` does for its own lazy metrics); ``kind`` is Counter or Gauge."""
    found = _metrics.get(name)
    if found is not None:
        return found
    import prometheus_client

    with _lock:
        if name not in _metrics:
            _metrics[name] = getattr(prometheus_client, kind)(name, documentation, **options)
    return _metrics[name]


def _failure_counter() -> Any:
    return metric("purser_announce_failures", "Counter",
                  "Terminal jobs whose announcement was not published (Redis failed or paused)")


def _published_counter() -> Any:
    return metric("purser_announced_jobs", "Counter",
                  "Terminal jobs announced to waiting clients after their batch committed")


def publish(jobs: list[tuple[str, str]]) -> bool:
    """Publish ``jobs`` (id, status) in messages of at most MAX_IDS_PER_MESSAGE; never raises."""
    global _open_until
    if not jobs:
        return True
    if time.monotonic() < _open_until:
        _count(_failure_counter, len(jobs))
        return False
    try:
        name = channel()
        client = _redis()
        for start in range(0, len(jobs), MAX_IDS_PER_MESSAGE):
            client.publish(name, encode(jobs[start:start + MAX_IDS_PER_MESSAGE]))
    except Exception as exc:  # noqa: BLE001 - an announcement is an optimisation only
        with _lock:
            _open_until = time.monotonic() + BREAKER_SECONDS
        _count(_failure_counter, len(jobs))
        log.warning("could not announce terminal jobs; waiting clients will read at their deadline",
                    extra={"jobs": len(jobs), "error": f"{type(exc).__name__}: {exc}"[:300],
                           "pauseSeconds": BREAKER_SECONDS})
        return False
    _count(_published_counter, len(jobs))
    return True


def announce_batch(batch: Any) -> bool:
    """Announce the jobs of a COMMITTED settlement batch. Never raises."""
    try:
        return publish(terminal_jobs(batch))
    except Exception:  # noqa: BLE001 - settlement must never see an announcement problem
        log.warning("could not announce a settlement batch", exc_info=True)
        return False


def _count(counter: Any, amount: int) -> None:
    try:
        counter().inc(amount)
    except Exception:  # noqa: BLE001 - metrics never break the caller
        log.debug("could not count an announcement", exc_info=True)


def reset() -> None:
    """Forget the client and the pause (tests)."""
    global _client, _client_key, _open_until
    _client, _client_key, _open_until = None, None, 0.0
