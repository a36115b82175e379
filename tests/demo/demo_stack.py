"""``python -m devstack demo`` (what ``make demo`` runs) as a test starts it: free ports, a private ``var/``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import psutil
import pytest

from devstack import demo
from devstack.ports import free_port
from tests.support.env import ROOT

DEMO_TIMEOUT = 120.0
# The test session's own stack variables (tests/support/env.py) must not leak into the
# demo: it runs as a developer's `make demo` does, with generated secrets in its var dir.
DROPPED = {"APP_ENV", "MONGODB_URI", "MONGODB_DB", "REDIS_URL", "FLOWER_BASIC_AUTH", "JWT_SECRET",
           "PROVIDER_WEBHOOK_SECRET", "RATE_LIMIT_ENABLED", "LEDGER_PARTITIONS", "WEB_BIND", "DEMO", "PORT",
           "FLOWER_PORT", "PROVIDER_SIM_PORT", "PAYOUT_PROVIDER_URL"}


class DemoStack:
    """``python -m devstack demo`` on free ports with ``var_dir``, its output in ``log_path``.

    ``extra`` overrides the environment (the Try-it test runs one web process; the
    rerun test the default two, where a stale role cache used to bite).
    """

    def __init__(self, var_dir: Path, log_path: Path, extra: Mapping[str, str] | None = None) -> None:
        self.var_dir = var_dir
        self.port, self.flower_port, self.sim_port = free_port(), free_port(), free_port()
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if k not in DROPPED}
        env.update(PURSER_VAR_DIR=str(self.var_dir), PORT=str(self.port), FLOWER_PORT=str(self.flower_port),
                   PROVIDER_SIM_PORT=str(self.sim_port), WORKER_CONCURRENCY="1",
                   DEVSTACK_LOG_FORMAT="console", NO_COLOR="1")
        env.update(extra or {})
        self.env = env
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "devstack", "demo"], cwd=ROOT, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_seeded(self) -> str:
        deadline = time.monotonic() + DEMO_TIMEOUT
        while time.monotonic() < deadline:
            out = self.output()
            if demo.READY_MARK in out:
                return out
            if "demo seeding failed" in out or self.proc.poll() is not None:
                pytest.fail(f"make demo did not finish seeding (exit {self.proc.poll()}):\n{out[-5000:]}")
            time.sleep(0.25)
        pytest.fail(f"no '{demo.READY_MARK}' after {DEMO_TIMEOUT:.0f} s:\n{self.output()[-5000:]}")

    def stop(self) -> int | None:
        """Ctrl-C, as a developer stops it; the launcher's exit status (None if it had to be killed)."""
        status: int | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                status = self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        else:
            status = self.proc.returncode
        self._log.close()
        marker = str(self.var_dir)
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if proc.pid != os.getpid() and (marker in " ".join(proc.info["cmdline"] or [])
                                                or proc.environ().get("PURSER_VAR_DIR") == marker):
                    proc.kill()
        return status
