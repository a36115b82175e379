"""Ports: free ones for the stores, tests and benches, and every port the dev launcher uses.

:func:`free_port` hands out a port nothing listens on (never the same one twice in
this process); :func:`port_in_use` probes one.

The dev launcher's ports are treated alike. A port given in the environment is the
developer's choice: if something already listens there the launcher refuses, naming
the variable, rather than start a stack that half works. A default that is busy
(another stack, an earlier run, some other program) is replaced by a free port and
the launcher says which, so ``make run`` works next to whatever else runs on the
machine. The stores always take free ports (``devstack/stores.py``).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

__all__ = ["LAUNCHER_PORTS", "PortBusy", "PortVar", "assign_ports", "free_port", "port_in_use"]

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



@dataclass(frozen=True)
class PortVar:
    variable: str
    default: int
    what: str
    # Another variable that, when set, makes this port unused (WEB_BIND names the API's address itself).
    unused_when: str | None = None
    off: str | None = None  # a value that turns the listener off (metrics: "0")


LAUNCHER_PORTS: tuple[PortVar, ...] = (
    PortVar("PORT", 5000, "the API (gunicorn)", unused_when="WEB_BIND"),
    PortVar("FLOWER_PORT", 5555, "Flower"),
    PortVar("PROVIDER_SIM_PORT", 5600, "the payout provider simulator", unused_when="PAYOUT_PROVIDER_URL"),
    PortVar("WORKER_METRICS_PORT", 9808, "the ledger worker's /metrics", off="0"),
    PortVar("HOUSEKEEPING_METRICS_PORT", 9809, "the housekeeping worker's /metrics", off="0"),
    PortVar("WEBHOOKS_METRICS_PORT", 9810, "the webhooks worker's /metrics", off="0"),
)


class PortBusy(Exception):
    """A port the environment names cannot be used; the message names the variable."""


def assign_ports(env: MutableMapping[str, str], ports: tuple[PortVar, ...] = LAUNCHER_PORTS,
                 busy: Callable[[int], bool] = port_in_use) -> list[str]:
    """Give every port variable of ``env`` a usable value; the lines to print about replaced defaults.

    Raises :class:`PortBusy` for a given port that is busy or not a port number.
    """
    notes: list[str] = []
    for port in ports:
        if port.unused_when and env.get(port.unused_when):
            continue
        given = (env.get(port.variable) or "").strip()
        if given:
            if port.off is not None and given == port.off:
                continue
            if not given.isdigit() or not 1 <= int(given) <= 65535:
                raise PortBusy(f"{port.variable}={given} is not a port number (1-65535)")
            if busy(int(given)):
                raise PortBusy(f"{port.variable}={given}: the port is already in use; "
                               f"free it or choose another {port.variable} for {port.what}")
            continue
        chosen = port.default
        if busy(chosen):
            chosen = free_port()
            notes.append(f"{port.variable}: the default {port.default} is in use; {port.what} uses {chosen}")
        env[port.variable] = str(chosen)
    return notes
