"""Orphan protection for the processes :class:`devstack.supervisor.ManagedProcess` starts.

Every started process is registered here so an ``atexit`` hook can stop whatever a
crashed caller left behind; on Linux the kernel sends the child a signal if its
parent dies without cleaning up (``PR_SET_PDEATHSIG``); SIGTERM and SIGHUP can be
turned into ``KeyboardInterrupt`` so ``finally`` blocks and the hook run.
"""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol


class ManagedProcess(Protocol):
    """What this module needs of :class:`devstack.supervisor.ManagedProcess`: the
    supervisor imports this module, so naming the class would make a circle."""

    name: str

    def stop(self, timeout: float | None = None) -> int | None: ...

log = logging.getLogger("devstack")

__all__ = ["death_signal_preexec", "forget", "install_signal_cleanup", "live_processes", "register", "stop_all"]

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


def death_signal_preexec(sig: int) -> Callable[[], None] | None:
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
    """Managed processes started and not yet stopped, oldest first."""
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


def register(proc: ManagedProcess) -> None:
    """``proc`` has started: stop it at exit unless it is stopped first."""
    _register_exit_hook()
    with _live_lock:
        _live[id(proc)] = proc


def forget(proc: ManagedProcess) -> None:
    """``proc`` has stopped."""
    with _live_lock:
        _live.pop(id(proc), None)


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
