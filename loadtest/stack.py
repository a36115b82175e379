"""An isolated Purser stack for the benchmark and the locust runner.

Fresh SecantusDB and Redis in a temporary directory on free ports, migrations
applied, gunicorn and Celery workers started with the process managers of
:mod:`devstack` (the same ones the test fixtures use). The calling process gets the
same configuration in ``os.environ`` so it can use the service layer directly
(``services.jobs.submit``, ``services.subscriptions.tick``, the invariants).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.apps import WebServer, WorkerProcess
from devstack.stores import ManagedProcess, MongoServer, RedisServer, free_port, stop_all
from loadtest.proctree import group_usage

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class StackOptions:
    web_workers: int = 2
    web_threads: int = 8
    worker_concurrency: int = 1
    worker_nodes: int = 1
    log_level: str = "INFO"
    partitions: int = 8
    keep: bool = False  # keep the temporary directory (logs, data) after the run


class Stack:
    """Stores, web and workers of one benchmark run; :meth:`close` stops everything."""

    def __init__(self, options: StackOptions) -> None:
        self.options = options
        self.tmp = Path(tempfile.mkdtemp(prefix="purser-bench-"))
        self.mongo = MongoServer(self.tmp / "mongo")
        self.redis = RedisServer(self.tmp / "redis")
        self.web: WebServer | None = None
        self.workers: list[WorkerProcess] = []
        self.worker_metrics_ports: list[int] = []
        self._started: list[ManagedProcess] = []
        self._worker_runs = 0
        self.worker_concurrency = options.worker_concurrency  # of the workers running now
        self.env: dict[str, str] = {
            "APP_ENV": "development",
            "PURSER_VAR_DIR": str(self.tmp / "var"),
            "MONGODB_DB": "purser_bench",
            "JWT_SECRET": secrets.token_urlsafe(36),
            "PROVIDER_WEBHOOK_SECRET": secrets.token_urlsafe(24),
            "RATE_LIMIT_ENABLED": "false",
            "LEDGER_PARTITIONS": str(options.partitions),
            "LOG_LEVEL": options.log_level,
            "WEB_THREADS": str(options.web_threads),
            "PYTHONUNBUFFERED": "1",
        }

    # -- lifecycle -------------------------------------------------------------------
    def start_stores(self) -> None:
        self._started.append(self.mongo.start())
        self._started.append(self.redis.start())
        self.env["MONGODB_URI"] = self.mongo.uri
        self.env["REDIS_URL"] = self.redis.url
        self._adopt_env()
        import migrations
        from infra.mongo import get_db

        migrations.up(get_db())

    def restart_mongo(self, *, sync_on_commit: bool) -> None:
        """The same store and data again, its journal synced at every commit or not; web and
        workers reconnect by themselves (same port)."""
        self.mongo.stop()
        self.mongo.sync_on_commit = sync_on_commit
        self.mongo.start()
        import infra.mongo

        infra.mongo.reset_client()

    def _adopt_env(self) -> None:
        """Make this process see the stack's configuration (before importing Celery)."""
        import infra.config
        import infra.mongo
        import infra.redis_client

        for name in ("PROMETHEUS_MULTIPROC_DIR", "SETTLE_BATCH_MAX"):
            os.environ.pop(name, None)
        os.environ.update(self.env)
        Path(self.env["PURSER_VAR_DIR"]).mkdir(parents=True, exist_ok=True)
        infra.config.VAR_DIR = Path(self.env["PURSER_VAR_DIR"])
        infra.config.reset_settings()
        infra.mongo.reset_client()
        infra.redis_client.reset_redis()

    def child_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "SETTLE_BATCH_MAX")}
        env.update(self.env)
        if extra:
            env.update(extra)
        return env

    def start_web(self) -> WebServer:
        self.web = WebServer(self.child_env(), self.tmp / "logs" / "web.log",
                             concurrency=self.options.web_workers, cwd=ROOT)
        self._started.append(self.web.start())
        return self.web

    def start_workers(self, extra_env: Mapping[str, str] | None = None,
                      concurrency: int | None = None) -> list[WorkerProcess]:
        """Start ``worker_nodes`` Celery workers consuming every queue (the stack's env + ``extra_env``).

        ``concurrency`` overrides ``options.worker_concurrency`` (prefork processes per node) for this start.
        """
        self._worker_runs += 1
        self.worker_metrics_ports = []
        self.worker_concurrency = concurrency or self.options.worker_concurrency
        for n in range(self.options.worker_nodes):
            port = free_port()
            env = self.child_env({"WORKER_METRICS_PORT": str(port), **(extra_env or {})})
            worker = WorkerProcess(env, self.tmp / "logs" / f"worker-run{self._worker_runs}-{n}.log",
                                   queues=None, concurrency=self.worker_concurrency, cwd=ROOT)
            self._started.append(worker.start())
            self.workers.append(worker)
            self.worker_metrics_ports.append(port)
        return self.workers

    def stop_workers(self) -> None:
        workers, self.workers = self.workers, []
        stop_all(workers)
        for worker in workers:
            with contextlib.suppress(ValueError):
                self._started.remove(worker)

    def restart_workers(self, extra_env: Mapping[str, str] | None = None,
                        concurrency: int | None = None) -> list[WorkerProcess]:
        self.stop_workers()
        return self.start_workers(extra_env, concurrency)

    def close(self) -> None:
        stop_all(list(reversed(self._started)))
        self._started.clear()
        with contextlib.suppress(Exception):
            from infra.mongo import close_client

            close_client()
        if not self.options.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- observation -----------------------------------------------------------------
    def _worker_metrics_texts(self) -> list[str]:
        """The ``/metrics`` page of each worker node that answers."""
        import urllib.request

        texts = []
        for port in self.worker_metrics_ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as response:
                    texts.append(response.read().decode())
            except OSError:
                continue
        return texts

    def worker_metrics(self) -> dict[str, float]:
        """Sum of the workers' settlement counters (batch count/sum, duration sum, conflict retries)."""
        wanted = {
            "purser_settle_batch_size_count": "batches",
            "purser_settle_batch_size_sum": "jobs",
            "purser_settle_batch_duration_seconds_sum": "batch_seconds",
            "purser_settle_conflict_retries_total": "conflict_retries",
        }
        totals = dict.fromkeys(wanted.values(), 0.0)
        for text in self._worker_metrics_texts():
            for line in text.splitlines():
                if line.startswith("#"):
                    continue
                name, _, value = line.partition(" ")
                name = name.split("{", 1)[0]
                if name in wanted:
                    with contextlib.suppress(ValueError):
                        totals[wanted[name]] += float(value)
        return totals

    def worker_histogram(self, name: str = "purser_settle_batch_size") -> dict[str, float]:
        """Cumulative bucket counts ``{le: count}`` of a worker histogram, summed over the nodes."""
        buckets: dict[str, float] = {}
        for text in self._worker_metrics_texts():
            for line in text.splitlines():
                if not line.startswith(name + "_bucket{"):
                    continue
                labels, _, value = line.rpartition(" ")
                le = labels.split('le="', 1)[1].split('"', 1)[0]
                with contextlib.suppress(ValueError):
                    buckets[le] = buckets.get(le, 0.0) + float(value)
        return buckets

    def process_groups(self) -> dict[str, list[ManagedProcess]]:
        groups: dict[str, list[ManagedProcess]] = {"web": [], "worker": list(self.workers),
                                                   "mongodb": [self.mongo], "redis": [self.redis]}
        if self.web is not None:
            groups["web"] = [self.web]
        return groups


@dataclass
class MemorySampler:
    """Samples the RSS of each process group of the stack and keeps the peaks."""

    stack: Stack
    interval: float = 0.5
    peaks: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        for name, used in group_usage(self.stack.process_groups()).items():
            if used.rss > self.peaks.get(name, 0):
                self.peaks[name] = used.rss

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return dict(self.peaks)


def wait_for(predicate: Any, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return bool(predicate())
