"""A small process supervisor for development, tests and benchmarks.

Each child runs in its own session so that a Ctrl-C on the terminal reaches only
our code, which then shuts the children down in order (newest first). Every
started process is registered so an ``atexit`` hook can stop whatever a crashed
caller left behind, and on Linux the kernel sends the child SIGTERM if its parent
dies without cleaning up (``PR_SET_PDEATHSIG``). Nothing here knows about stores
or the app: :mod:`devstack.stores` and :mod:`devstack.apps` subclass
:class:`ManagedProcess`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import psutil

log = logging.getLogger("devstack")

__all__ = [
    "ManagedProcess",
    "ProcessStartError",
    "free_port",
    "install_signal_cleanup",
    "live_processes",
    "port_in_use",
    "stop_all",
]


class ProcessStartError(RuntimeError):
    """A managed process exited or did not become ready during start-up."""


# ---------------------------------------------------------------------------
# ports

_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    The kernel may hand the same ephemeral port out twice in a row once the
    probe socket is closed, so ports already returned by this process are
    skipped: two servers started back to back must not race for one port.
    """
    with _ports_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("could not find a free TCP port")


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


# ---------------------------------------------------------------------------
# orphan protection

_live: dict[int, ManagedProcess] = {}
_live_lock = threading.Lock()

_PR_SET_PDEATHSIG = 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library for ``prctl`` (Linux only), loaded on the first start, not at import."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover - exotic libc
        return None


def _death_signal_preexec(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking the kernel to signal the child when we die.

    PDEATHSIG fires when the *thread* that forked exits, so it is only armed
    for children started from the main thread; a helper thread that starts a
    server and returns must not take the server down with it.
    """
    libc = _libc()
    if libc is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    prctl = libc.prctl

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        # The parent may have died between fork and prctl.
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return arm


def live_processes() -> list[ManagedProcess]:
    """Processes started through this module and not yet stopped, oldest first."""
    with _live_lock:
        return list(_live.values())


def stop_all(processes: Iterable[ManagedProcess] | None = None, timeout: float | None = None) -> list[str]:
    """Stop ``processes`` (default: every live one) newest first, never raising.

    Newest first because later processes usually depend on earlier ones (the
    app on its stores). Returns one message per process that failed to stop.
    """
    targets = live_processes() if processes is None else list(processes)
    problems: list[str] = []
    for proc in reversed(targets):
        try:
            proc.stop(timeout=timeout)
        except Exception as exc:  # cleanup must reach every process
            problems.append(f"{proc.name}: {exc}")
            log.warning("could not stop %s: %s", proc.name, exc)
    return problems


def _stop_all_at_exit() -> None:
    if live_processes():
        stop_all()


@functools.cache
def _register_exit_hook() -> None:
    """Registered with the first started process, so importing this module changes nothing."""
    atexit.register(_stop_all_at_exit)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def install_signal_cleanup(signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """Turn SIGTERM/SIGHUP into ``KeyboardInterrupt`` so teardown and atexit run.

    The default action of these signals ends the interpreter without running
    ``finally`` blocks or ``atexit`` hooks, which would orphan every child.
    KeyboardInterrupt (not SystemExit) because pytest records a SystemExit
    raised inside a test as a failure and carries on, whereas it stops the
    session and runs fixture finalizers on KeyboardInterrupt. Handlers that
    someone else installed are left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _raise_keyboard_interrupt)


# ---------------------------------------------------------------------------
# generic managed process


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
                preexec_fn=_death_signal_preexec(self.death_signal),
            )
        if self.line_sink is not None:
            self._pump = threading.Thread(target=self._pump_lines, args=(self._proc, self.line_sink),
                                          name=f"{self.name}-output", daemon=True)
            self._pump.start()
        _register_exit_hook()
        with _live_lock:
            _live[id(self)] = self
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
        with _live_lock:
            _live.pop(id(self), None)
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
