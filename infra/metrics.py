"""Prometheus metrics of web and worker processes.

Multi-process mode: once ``PROMETHEUS_MULTIPROC_DIR`` is set and
:func:`use_multiprocess_values` has run (the process's entry point calls it, right
after choosing the directory), every value lives in an mmapped file of that
directory, one per process, and :func:`render` merges them. Importing this module
changes nothing: metrics with labels hold no value until their first ``labels()``,
and the ones without labels are created on first use, so any module may import it
at the top. Gunicorn's
config sets the variable for the web (one directory per bind address, emptied at
start); the Celery worker's main process sets it in ``celeryd_init`` before the
pool forks and serves the merged view on ``WORKER_METRICS_PORT``
(:func:`infra.observability.init_worker_main`). Without the variable (tests using
the Flask test client, a one-off script) the default in-process registry is used.

Label values are bounded: route templates (not raw paths), job types, stable error
codes, partition numbers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

log = logging.getLogger("purser.metrics")

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)

# --- web -------------------------------------------------------------------------
HTTP_REQUESTS = Counter("purser_http_requests", "HTTP requests answered, by route template, method and status",
                        ["route", "method", "status"])
HTTP_DURATION = Histogram("purser_http_request_duration_seconds", "Time to answer an HTTP request",
                          ["route", "method"])
JOBS_ACCEPTED = Counter("purser_jobs_accepted", "Money requests accepted as new jobs (202, not replays)",
                        ["type"])
JOBS_SHED = Counter("purser_jobs_shed", "Money requests refused with 503 BACKLOG_FULL (no job created), "
                    "by the partition that was full", ["partition"])
CACHE_LOOKUPS = Counter("purser_cache_lookups", "Lookups in the web process's caches of facts that do not "
                        "change, by cache and result (hit: no store read)", ["cache", "result"])
RATE_LIMITED = Counter("purser_rate_limit_refusals", "Requests refused with 429, by limit and caller tier",
                       ["limit", "tier"])

# --- worker ------------------------------------------------------------------------
JOBS_SETTLED = Counter("purser_jobs_settled", "Jobs settled (effects applied)", ["type"])
JOBS_FAILED = Counter("purser_jobs_failed", "Jobs failed with a stable error code", ["type", "code"])
SETTLE_LATENCY = Histogram("purser_settle_latency_seconds",
                           "From acceptance (createdAt) to the committed outcome (settledAt)",
                           ["type", "outcome"], buckets=LATENCY_BUCKETS)
WEBHOOK_ATTEMPTS = Counter("purser_webhook_attempts",
                           "Webhook delivery attempts by what the delivery became: delivered, pending "
                           "(another attempt scheduled) or failed (schedule spent, 410, endpoint disabled)",
                           ["result"])
BROKEN_INVARIANTS = Counter("purser_settle_broken_invariants",
                            "Settlement batches or jobs refused because the money contradicts an approved "
                            "decision (a balance guard, an unbalanced plan); the job is held queued", ["guard"])
TASK_FAILURES = Counter("purser_task_failures", "Celery tasks that ended with an exception", ["task"])
QUEUED_JOBS = Gauge("purser_jobs_queued", "Jobs waiting in a partition (observed by its settler and the sweeper)",
                    ["partition"], multiprocess_mode="mostrecent")
QUEUE_AGE = Gauge("purser_jobs_queued_oldest_age_seconds",
                  "Age of the oldest queued job of a partition (0 when empty; observed by its settler and the sweeper)",
                  ["partition"], multiprocess_mode="mostrecent")
DRAIN_RATE = Gauge("purser_partition_drain_rate",
                   "Jobs per second a partition settled while it had a backlog (recent average)",
                   ["partition"], multiprocess_mode="mostrecent")
BACKLOG_LIMIT = Gauge("purser_backlog_limit_jobs",
                      "Queued jobs above which the partition refuses new ones (BACKLOG_MAX_SECONDS x drain "
                      "rate, at least BACKLOG_MIN_JOBS; 0 = no limit)", ["partition"], multiprocess_mode="mostrecent")

# Metrics without labels have a sample (0) as soon as they exist. Created on first
# use, so that a web process does not publish a worker's "purser_reconcile_drift 0"
# (or a worker the web's counters): ``metrics.RECONCILE_DRIFT`` works as usual.
_LAZY: dict[str, Callable[[], Any]] = {
    "RATE_LIMIT_STORAGE_ERRORS": lambda: Counter(
        "purser_rate_limit_storage_errors", "Rate-limit checks skipped because Redis failed (fail open)"),
    "BATCH_SIZE": lambda: Histogram("purser_settle_batch_size", "Jobs decided per settlement transaction",
                                    buckets=BATCH_BUCKETS),
    "BATCH_DURATION": lambda: Histogram("purser_settle_batch_duration_seconds",
                                        "Wall time of one settlement batch, conflict retries included",
                                        buckets=LATENCY_BUCKETS),
    "SETTLE_CONFLICTS": lambda: Counter("purser_settle_conflict_retries",
                                        "Settlement transactions retried after a write conflict"),
    "CONSUMER_RESTARTS": lambda: Counter(
        "purser_worker_consumer_restarts",
        "Consumers the watchdog restarted: queues holding messages, nothing received, a process free"),
    "RECONCILE_DRIFT": lambda: Gauge(
        "purser_reconcile_drift",
        "Coins by which balances differ from the ledger, plus |sum of balances| (0 = healthy)",
        multiprocess_mode="mostrecent"),
    # group commit at the door (services/group_commit.py), web processes with ACCEPT_LINGER_MS > 0
    "ACCEPT_BATCH_SIZE": lambda: Histogram("purser_accept_batch_size", "Jobs written per group-commit insert",
                                           buckets=BATCH_BUCKETS),
    "ACCEPT_LINGER": lambda: Histogram(
        "purser_accept_linger_seconds", "From a group-commit batch's first request to its write (the linger "
        "actually waited: shorter when the batch filled)", buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05)),
    "ACCEPT_OVERFLOW": lambda: Counter(
        "purser_accept_batch_overflow", "Requests that inserted their job alone because ACCEPT_BATCH_MAX x 8 "
        "requests were already waiting in batches"),
}
_lazy_lock = threading.Lock()


def __getattr__(name: str) -> Any:
    factory = _LAZY.get(name)
    if factory is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    with _lazy_lock:
        if name not in globals():
            globals()[name] = factory()
    return globals()[name]


def _lazy(name: str) -> Any:
    return __getattr__(name) if name not in globals() else globals()[name]


def use_multiprocess_values() -> bool:
    """Make values from now on live in ``PROMETHEUS_MULTIPROC_DIR`` (when set); whether they do.

    prometheus_client chooses its value class when it is first imported; a process that
    imported it before choosing the directory (a worker imports its task modules first)
    chooses again here, before any metric holds a value.
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") and not multiprocess_enabled():
        values.ValueClass = values.get_value_class()
    return multiprocess_enabled()


def multiprocess_enabled() -> bool:
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def registry() -> CollectorRegistry:
    """The registry to expose: all processes' files merged, or this process's own."""
    if multiprocess_enabled():
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return merged
    return REGISTRY


def render() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_DURATION.labels(route, method).observe(seconds)


def record_accepted(job: dict[str, Any]) -> None:
    JOBS_ACCEPTED.labels(str(job.get("type", "unknown"))).inc()


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def record_batch(batch: Any, now: datetime | None = None) -> None:
    """Count one committed settlement batch (``services.batch_runner.BatchResult``).

    Never raises: metrics must not turn a committed batch into a task failure.
    """
    try:
        now = now or datetime.now(UTC)
        if batch.size:
            _lazy("BATCH_SIZE").observe(batch.size)
            _lazy("BATCH_DURATION").observe(batch.duration)
        if batch.retries:
            _lazy("SETTLE_CONFLICTS").inc(batch.retries)
        for job, outcome in batch.outcomes:
            job_type = str(job.get("type", "unknown"))
            if outcome.ok:
                JOBS_SETTLED.labels(job_type).inc()
            else:
                JOBS_FAILED.labels(job_type, str(getattr(outcome, "code", "UNKNOWN"))).inc()
            created = job.get("createdAt")
            if isinstance(created, datetime):
                SETTLE_LATENCY.labels(job_type, "settled" if outcome.ok else "failed").observe(
                    max(0.0, (now - _aware(created)).total_seconds()))
    except Exception:  # noqa: BLE001
        log.warning("could not record settlement metrics", exc_info=True)


def record_broken_invariant(guard: str) -> None:
    """Count one broken invariant. Never raises: the alarm must not hide what it reports."""
    try:
        BROKEN_INVARIANTS.labels(guard).inc()
    except Exception:  # noqa: BLE001
        log.warning("could not count a broken invariant", exc_info=True)


def record_cache_lookup(cache: str, *, hit: bool) -> None:
    """Count one lookup in a web cache of facts that do not change (``services/known_facts.py``,
    ``api/auth.py``). Never raises."""
    try:
        CACHE_LOOKUPS.labels(cache, "hit" if hit else "miss").inc()
    except Exception:  # noqa: BLE001 - metrics never break the caller
        log.debug("could not count a cache lookup", exc_info=True)


def record_consumer_restart() -> None:
    """Count one consumer the watchdog restarted (workers/watchdog.py). Never raises."""
    try:
        _lazy("CONSUMER_RESTARTS").inc()
    except Exception:  # noqa: BLE001 - metrics never break the caller
        log.warning("could not count a consumer restart", exc_info=True)


def record_loads(loads: Iterable[Any], limits: Any) -> None:
    """Set the backlog gauges from published loads (``infra.backlog.Load``, ``Limits``). Never raises."""
    try:
        for load in loads:
            label = str(load.partition)
            QUEUED_JOBS.labels(label).set(load.queued)
            QUEUE_AGE.labels(label).set(load.oldest_age)
            DRAIN_RATE.labels(label).set(load.rate)
            BACKLOG_LIMIT.labels(label).set(limits.jobs(load) if limits.enabled else 0)
    except Exception:  # noqa: BLE001 - metrics never break the caller
        log.warning("could not record backlog metrics", exc_info=True)


def record_accept_batch(size: int, lingered: float) -> None:
    """Count one group-commit write of ``size`` jobs after ``lingered`` seconds. Never raises."""
    try:
        _lazy("ACCEPT_BATCH_SIZE").observe(size)
        _lazy("ACCEPT_LINGER").observe(max(0.0, lingered))
    except Exception:  # noqa: BLE001 - metrics never break the caller
        log.debug("could not record an accept batch", exc_info=True)


def record_accept_overflow() -> None:
    try:
        _lazy("ACCEPT_OVERFLOW").inc()
    except Exception:  # noqa: BLE001 - metrics never break the caller
        log.debug("could not count an accept overflow", exc_info=True)


def record_shed(partition: int) -> None:
    JOBS_SHED.labels(str(partition)).inc()


def mark_process_dead(pid: int) -> None:
    """Forget a dead process's live gauges (multi-process mode only)."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)
