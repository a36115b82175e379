"""The Purser app processes (Celery worker, gunicorn) as managed children.

Used by the pytest fixtures and the benchmark; the dev launcher runs the same
commands through the Procfile instead.
"""

from __future__ import annotations

import itertools
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from devstack.ports import free_port, port_in_use
from devstack.supervisor import ManagedProcess, ProcessStartError

if TYPE_CHECKING:
    from celery import Celery

ROOT = Path(__file__).resolve().parent.parent

_worker_numbers = itertools.count(1)


class WorkerProcess(ManagedProcess):
    """``celery -A workers worker`` with a prefork pool and a unique node name."""

    ready_timeout = 30.0
    stop_timeout = 10.0

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        queues: Sequence[str] | None = None,
        concurrency: int = 1,
        cwd: Path = ROOT,
    ) -> None:
        number = next(_worker_numbers)
        self.queues = list(queues) if queues is not None else None
        self.concurrency = concurrency
        self.nodename = f"w{number}@{socket.gethostname()}"
        super().__init__(log_path=log_path, env=env, cwd=cwd, name=f"celery worker w{number}")
        self._number = number
        self._ping_app: Celery | None = None
        self._ping_after = 0.0

    def build_command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "--pool=prefork",
            f"--concurrency={self.concurrency}",
            "-n",
            f"w{self._number}@%h",
            "--without-mingle",
            "--without-gossip",
            "--loglevel=INFO",
        ]
        if self.queues is not None:
            command += ["-Q", ",".join(self.queues)]
        return command

    def probe(self) -> bool:
        if f"{self.nodename} ready." in self.log_tail(lines=400):
            return True
        return self._ping()

    def _ping(self) -> bool:
        # A bare app speaks the same broadcast protocol as the project's app and
        # spares the test process the project's import-time signal handlers.
        from celery import Celery

        if time.monotonic() < self._ping_after:
            return False
        self._ping_after = time.monotonic() + 1.0
        if self._ping_app is None:
            assert self.env is not None
            self._ping_app = Celery("devstack-ping", broker=self.env["REDIS_URL"])
        replies = self._ping_app.control.ping(destination=[self.nodename], timeout=0.5)
        return any(self.nodename in reply for reply in replies)

    def child_pids(self) -> list[int]:
        """Pids of the pool processes (what a fault test SIGKILLs)."""
        return [p.pid for p in self.descendants()]

    def pool_processes(self) -> list[psutil.Process]:
        return self.descendants()

    def stop(self, timeout: float | None = None) -> int | None:
        code = super().stop(timeout)
        if self._ping_app is not None:
            self._ping_app.close()
            self._ping_app = None
        return code


class WebServer(ManagedProcess):
    """Gunicorn serving ``api:create_app()`` with the repository's gunicorn.conf.py."""

    ready_timeout = 30.0
    # Gunicorn's graceful_timeout is 10 s; leave it room before SIGKILL.
    stop_timeout = 15.0

    def __init__(
        self,
        env: Mapping[str, str],
        log_path: Path,
        port: int | None = None,
        concurrency: int = 2,
        cwd: Path = ROOT,
    ) -> None:
        self.port = port if port is not None else free_port()
        child_env = dict(env)
        child_env["WEB_BIND"] = f"127.0.0.1:{self.port}"
        child_env["WEB_CONCURRENCY"] = str(concurrency)
        super().__init__(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "api:create_app()"],
            log_path=log_path,
            env=child_env,
            cwd=cwd,
            name=f"gunicorn :{self.port}",
        )

    def before_start(self) -> None:
        # Gunicorn keeps retrying a busy port, and meanwhile the probe would reach the other server.
        if port_in_use(self.port):
            raise ProcessStartError(f"{self.name}: port {self.port} is already in use")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def probe(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/api/health", timeout=2) as response:
                return response.status == 200
        except urllib.error.HTTPError:
            return False
