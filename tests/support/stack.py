"""App processes for test stacks, started from the Procfile's own command lines.

What production runs is what the tests run: :func:`procfile_command` reads a role's
line from ``Procfile`` (the one parser of it in the tests), expands its
``${VAR:-default}`` references against the child's environment and splits it like
a shell would. :class:`RoleWorker` runs the ``worker`` role (ledger queues), the
``housekeeping`` role (``purser.default``: beat's sweep, reconcile and subscription
tick) or the ``webhooks`` role (``purser.webhooks``: deliveries, a thread pool);
:class:`Workers` is the set a shared test stack runs; :class:`Beat` and
:class:`Web` run the ``beat`` and ``web`` lines.

A test may narrow what a process does (``queues``, ``concurrency``, a private beat
schedule) but never change its shape. Every worker gets a unique node name (tests
ping and kill workers by name) and ``--without-mingle --without-gossip`` (start-up
speed; neither changes what a worker consumes).
"""

from __future__ import annotations

import re
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.apps import WebServer, WorkerProcess
from devstack.supervisor import ManagedProcess
from tests.support.env import ROOT

PROCFILE = ROOT / "Procfile"

_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}"
                        r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class ProcfileCommand:
    role: str
    argv: list[str]  # the program's argv, the program run by this interpreter (python -m celery)
    env: dict[str, str] = field(default_factory=dict)  # the line's leading NAME=value assignments


def procfile_lines(procfile: Path = PROCFILE) -> dict[str, str]:
    """``role -> command line`` of every process in the Procfile."""
    lines = {}
    for raw in procfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        role, sep, command = line.partition(":")
        assert sep and role.strip(), f"{procfile}: not a 'role: command' line: {raw!r}"
        lines[role.strip()] = command.strip()
    return lines


def expand(text: str, env: Mapping[str, str]) -> str:
    """``$NAME``, ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}`` as sh expands them."""

    def one(match: re.Match[str]) -> str:
        name = match.group("name") or match.group("bare")
        value = env.get(name, "")
        if match.group("op") == ":-" and not value:
            return match.group("arg")
        if match.group("op") == ":?" and not value:
            raise ValueError(f"Procfile: {name} is required: {match.group('arg')}")
        return value

    return _REFERENCE.sub(one, text)


def procfile_command(role: str, env: Mapping[str, str], procfile: Path = PROCFILE) -> ProcfileCommand:
    """The ``role`` line of the Procfile as argv and extra variables, expanded against ``env``."""
    lines = procfile_lines(procfile)
    assert role in lines, f"no {role!r} in {procfile} (roles: {', '.join(lines)})"
    words = shlex.split(expand(lines[role], env))
    assigned: dict[str, str] = {}
    while words and _ASSIGNMENT.match(words[0]):
        name, _, value = words.pop(0).partition("=")
        assigned[name] = value
    # The venv's console scripts are this interpreter's modules.
    assert words and words[0] in ("celery", "gunicorn"), f"unexpected program in Procfile {role}: {words[:1]}"
    return ProcfileCommand(role, [sys.executable, "-m", *words], assigned)


def _without_options(argv: Sequence[str], *names: str) -> list[str]:
    """``argv`` without the options ``names`` (``--name=value`` or ``--name value`` / ``-n value``)."""
    out: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        if word in names:
            skip = True
            continue
        if any(word.startswith(f"{name}=") for name in names if name.startswith("--")):
            continue
        out.append(word)
    return out


class RoleWorker(WorkerProcess):
    """A Celery worker of one Procfile role (``worker`` or ``housekeeping``).

    ``queues`` replaces the role's queue selection and ``concurrency`` its pool size
    (the ``worker`` role reads ``WORKER_CONCURRENCY`` from the environment, which is
    the usual way to size it).
    """

    def __init__(self, role: str, env: Mapping[str, str], log_path: Path, *,
                 queues: Sequence[str] | None = None, concurrency: int | None = None) -> None:
        command = procfile_command(role, env)
        assert command.argv[3:6] == ["-A", "workers", "worker"], f"Procfile {role} is not a Celery worker"
        super().__init__({**env, **command.env}, log_path, queues=queues, concurrency=concurrency or 1, cwd=ROOT)
        self.role = role
        self.nodename = f"{role}-w{self._number}@{socket.gethostname()}"
        self.name = f"celery {role} {self.nodename}"
        argv = _without_options(command.argv, "-n", "--hostname")
        if queues is not None:
            argv = _without_options(argv, "-Q", "--queues", "--exclude-queues", "-X") + ["-Q", ",".join(queues)]
        if concurrency is not None:
            argv = _without_options(argv, "-c", "--concurrency") + [f"--concurrency={concurrency}"]
        self._argv = [*argv, "-n", f"{role}-w{self._number}@%h", "--without-mingle", "--without-gossip"]

    def build_command(self) -> list[str]:
        return list(self._argv)


@dataclass
class Workers:
    """The worker roles of a stack, as the Procfile runs them."""

    ledger: RoleWorker
    housekeeping: RoleWorker
    webhooks: RoleWorker

    @classmethod
    def create(cls, env: Mapping[str, str], logs: Path) -> Workers:
        return cls(RoleWorker("worker", env, logs / "worker.log"),
                   RoleWorker("housekeeping", env, logs / "housekeeping.log"),
                   RoleWorker("webhooks", env, logs / "webhooks.log"))

    @property
    def processes(self) -> list[RoleWorker]:
        return [self.ledger, self.housekeeping, self.webhooks]

    def start(self, timeout: float | None = None) -> Workers:
        for worker in self.processes:
            worker.start(timeout)
        return self

    @property
    def nodename(self) -> str:
        """The ledger worker's node name (the one readiness asks for)."""
        return self.ledger.nodename

    @property
    def alive(self) -> bool:
        return all(w.alive for w in self.processes)

    def log_tail(self, lines: int = 40, since_start: bool = True) -> str:
        """Both workers' logs, ledger first (tasks of beat run in the housekeeping one)."""
        return "\n".join(w.log_tail(lines, since_start) for w in self.processes)


class Beat(ManagedProcess):
    """The Procfile's ``beat`` line, with a schedule file of its own."""

    ready_timeout = 45.0
    stop_timeout = 10.0

    def __init__(self, env: Mapping[str, str], log_path: Path, schedule: Path, name: str = "beat") -> None:
        command = procfile_command("beat", env)
        argv = _without_options(command.argv, "-s", "--schedule") + [f"--schedule={schedule}"]
        super().__init__(argv, log_path=log_path, env={**env, **command.env}, cwd=ROOT, name=name)

    def probe(self) -> bool:
        return "beat: Starting" in self.log_tail(lines=200)


class Web(WebServer):
    """The Procfile's ``web`` line (gunicorn with gunicorn.conf.py) on a free port."""

    def __init__(self, env: Mapping[str, str], log_path: Path, concurrency: int = 2) -> None:
        super().__init__(env, log_path, concurrency=concurrency, cwd=ROOT)
        assert self.env is not None
        command = procfile_command("web", self.env)
        self.env.update(command.env)
        self._command = command.argv

