"""A small process supervisor for development, tests and benchmarks.

Each child runs in its own session so that a Ctrl-C on the terminal reaches only
our code, which then shuts the children down in order (newest first). Every
started process is registered with :mod:`devstack.orphans` (an ``atexit`` hook,
``PR_SET_PDEATHSIG``); free ports come from :mod:`devstack.ports`. Nothing here
knows about stores or the app: :mod:`devstack.stores` and :mod:`devstack.apps` subclass
:class:`ManagedProcess`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import psutil

from devstack import orphans

log = logging.getLogger("devstack")

__all__ = ["ManagedProcess", "ProcessStartError"]


class ProcessStartError(RuntimeError):
    """A managed process exited or did not become ready during start-up."""


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_orphaned_group(pgid: int) -> None:
    """SIGKILL what is left of the group of a leader we have already reaped.

    The kernel does not hand out a pid that is still a process-group id, so if
    the pid is in use again the old group is empty and the pid is somebody
    else's: leave it alone.
    """
    if not psutil.pid_exists(pgid):
        _signal_group(pgid, signal.SIGKILL)


def _signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc.is_running():
                proc.send_signal(sig)


class ManagedProcess:
    """A child process in its own session with its output in a log file.

    ``log_path=None`` lets the child write to our stdout/stderr instead, or, with
    ``line_sink``, hands each line of its merged stdout and stderr to that callable
    (from a reader thread; the dev launcher renders honcho's output this way).

    Subclasses provide the command (:meth:`build_command`) and a readiness
    probe (:meth:`probe`); :meth:`start` waits until the probe succeeds.
    """

    name = "process"
    ready_timeout = 30.0
    stop_timeout = 10.0
    death_signal: int = signal.SIGTERM

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        log_path: Path | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pid_path: Path | None = None,
        name: str | None = None,
        line_sink: Callable[[str], None] | None = None,
    ) -> None:
        if line_sink is not None and log_path is not None:
            raise ValueError("line_sink replaces the log file; pass one or the other")
        self._command = list(command) if command is not None else None
        self.line_sink = line_sink
        self._pump: threading.Thread | None = None
        self.log_path = Path(log_path) if log_path is not None else None
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.pid_path = pid_path
        if name is not None:
            self.name = name
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- hooks ---------------------------------------------------------------
    def build_command(self) -> list[str]:
        if self._command is None:
            raise NotImplementedError("pass command= or override build_command()")
        return list(self._command)

    def probe(self) -> bool:
        """True once the process serves requests; exceptions count as not yet."""
        return True

    def before_start(self) -> None:
        """Called before each spawn (create directories, check for a stale owner)."""

    # -- state ---------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def log_tail(self, lines: int = 40, since_start: bool = True) -> str:
        """The last ``lines`` of the log, by default only of the current run."""
        if self.log_path is None:
            return ""
        try:
            with self.log_path.open("rb") as fh:
                if since_start:
                    fh.seek(self._log_offset)
                data = fh.read()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])

    def descendants(self) -> list[psutil.Process]:
        if not self.alive or self.pid is None:
            return []
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.Error:
            return []

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout: float | None = None) -> Self:
        if self.alive:
            return self
        self.before_start()
        command = self.build_command()
        with contextlib.ExitStack() as stack:
            output: IO[bytes] | None = None
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                output = stack.enter_context(self.log_path.open("ab"))
                self._log_offset = output.tell()
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                output.write(f"--- {stamp} starting: {' '.join(command)}\n".encode())
                output.flush()
            piped = self.line_sink is not None
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if piped else output,
                stderr=subprocess.STDOUT if output is not None or piped else None,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=orphans.death_signal_preexec(self.death_signal),
            )
        if self.line_sink is not None:
            self._pump = threading.Thread(target=self._pump_lines, args=(self._proc, self.line_sink),
                                          name=f"{self.name}-output", daemon=True)
            self._pump.start()
        orphans.register(self)
        if self.pid_path is not None:
            self.pid_path.parent.mkdir(parents=True, exist_ok=True)
            self.pid_path.write_text(f"{self.pid}\n")
        try:
            self._wait_ready(self.ready_timeout if timeout is None else timeout)
        except BaseException:
            self.stop(timeout=5)
            raise
        log.info("%s ready (pid %s)", self.name, self.pid)
        return self

    @staticmethod
    def _pump_lines(proc: subprocess.Popen[bytes], sink: Callable[[str], None]) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for raw in iter(proc.stdout.readline, b""):
                try:
                    sink(raw.decode("utf-8", "replace"))
                except Exception:  # noqa: BLE001 - a rendering bug must not stop the child's output
                    log.exception("output sink of %s failed", proc.pid)

    def _wait_ready(self, timeout: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        delay = 0.05
        last_error: BaseException | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ProcessStartError(
                    f"{self.name} exited with code {code} during start-up; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if self.probe():
                    # Ready only while still running; a crash right after answering is reported above.
                    if self._proc.poll() is None:
                        return
                    continue
            except Exception as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                why = f" (last probe error: {last_error})" if last_error else ""
                raise ProcessStartError(
                    f"{self.name} not ready after {timeout:.0f} s{why}; log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait ``timeout`` s, then SIGKILL the group and any stray descendants."""
        proc = self._proc
        if proc is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        family: list[psutil.Process] = []
        if proc.poll() is None:
            family = self.descendants()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %s) ignored SIGTERM for %.0f s; killing it", self.name, proc.pid, timeout)
                family = list({p.pid: p for p in family + self.descendants()}.values())
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        # Members that outlived the leader, e.g. pool children of a worker that was SIGKILLed.
        _kill_orphaned_group(proc.pid)
        _signal_all(family, signal.SIGKILL)
        self._finish()
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the process, its group and its descendants (fault injection)."""
        proc = self._proc
        if proc is None:
            return
        family = self.descendants()
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
        _signal_all(family, signal.SIGKILL)
        proc.wait()
        _kill_orphaned_group(proc.pid)
        for child in family:
            with contextlib.suppress(psutil.Error):
                child.wait(timeout=5)
        self._finish()

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def _finish(self) -> None:
        # The child's last lines (honcho's shutdown report) reach the sink before we return;
        # a grandchild that kept the pipe open must not hold the caller up for long.
        if self._pump is not None and self._pump is not threading.current_thread():
            self._pump.join(timeout=3)
            self._pump = None
        orphans.forget(self)
        if self.pid_path is not None:
            with contextlib.suppress(FileNotFoundError):
                if self.pid_path.read_text().strip() == str(self.pid):
                    self.pid_path.unlink()

    def _check_stale(self, owns: Callable[[psutil.Process], bool]) -> None:
        """Refuse to start over a process of an earlier run that still owns our data."""
        if self.pid_path is None or not self.pid_path.exists():
            return
        try:
            old = psutil.Process(int(self.pid_path.read_text().strip()))
            if old.pid != os.getpid() and old.is_running() and owns(old):
                raise ProcessStartError(
                    f"{self.name}: pid {old.pid} from an earlier run still uses this data "
                    f"(pid file {self.pid_path}); stop that run or `kill {old.pid}` first"
                )
        except (ValueError, psutil.Error):
            pass
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.alive else "stopped"
        return f"<{type(self).__name__} {self.name} {state}>"
