"""``python -m devstack run``: the whole Purser stack on one machine (``make run``).

Starts SecantusDB and Redis unless ``MONGODB_URI`` / ``REDIS_URL`` point
elsewhere, validates the configuration, applies migrations, then runs the
Procfile under honcho. Data lives in ``var/`` (or ``PURSER_VAR_DIR``) and is
reused by the next start. Ctrl-C stops the app processes first, then the stores.

On a terminal (``APP_ENV=development``) honcho's output goes through
:mod:`devstack.console`: one readable line per event instead of raw JSON
(``DEVSTACK_LOG_FORMAT=console|json`` decides explicitly). With ``demo=True``
(``make demo``, ``make run DEMO=1``) :mod:`devstack.demo` seeds accounts and money
once the stack is ready and prints the commands to try.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

from devstack import demo as demo_data
from devstack.console import ConsoleRenderer, choose_format, use_colour
from devstack.orphans import stop_all
from devstack.ports import PortBusy, assign_ports
from devstack.provider_sim import ProviderSimProcess
from devstack.stores import MongoServer, RedisServer
from devstack.supervisor import ManagedProcess, ProcessStartError

ROOT = Path(__file__).resolve().parent.parent
HONCHO_STOP_TIMEOUT = 15.0
BANNER_WAIT = 60.0
# The console renderer's lines and the launcher's blocks come from different threads.
_OUTPUT_LOCK = threading.Lock()


class _Signals:
    """SIGINT/SIGTERM handling for the launcher.

    While stores start, a signal raises KeyboardInterrupt so a slow start can be
    abandoned; once everything runs it only sets a flag that the supervise loop
    polls, so the shutdown sequence is never interrupted half-way.
    """

    def __init__(self) -> None:
        self.count = 0
        self.interruptible = True

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.interruptible:
            self.interruptible = False
            raise KeyboardInterrupt

    @property
    def requested(self) -> bool:
        return self.count > 0

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def _say(message: str) -> None:
    with _OUTPUT_LOCK:
        print(f"devstack: {message}", file=sys.stderr, flush=True)


def _emit(text: str) -> None:
    with _OUTPUT_LOCK:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def flower_basic_auth(var_dir: Path) -> str:
    """``admin:<random>``, generated once and kept in ``var/secrets`` so bookmarks keep working."""
    path = var_dir / "secrets" / "flower_basic_auth"
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    path.parent.mkdir(parents=True, exist_ok=True)
    value = f"admin:{secrets.token_urlsafe(18)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def _mask(uri: str) -> str:
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", uri)


def _api_base(env: Mapping[str, str]) -> str:
    bind = env.get("WEB_BIND", "")
    if re.fullmatch(r"[\w.\-]+:\d+", bind):
        host, port = bind.rsplit(":", 1)
        if host in ("0.0.0.0", "localhost"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"
    return f"http://127.0.0.1:{env.get('PORT', '5000')}"


def _flower_base(env: Mapping[str, str]) -> str:
    return f"http://{env.get('FLOWER_ADDRESS', '127.0.0.1')}:{env.get('FLOWER_PORT', '5555')}"


def _metrics_ports(env: Mapping[str, str]) -> str:
    ports = [(role, env.get(variable, "")) for role, variable in (
        ("worker", "WORKER_METRICS_PORT"), ("housekeeping", "HOUSEKEEPING_METRICS_PORT"),
        ("webhooks", "WEBHOOKS_METRICS_PORT"))]
    return ", ".join(f"{role} :{port}" if port not in ("", "0") else f"{role} off" for role, port in ports)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def banner(
    env: Mapping[str, str],
    var_dir: Path,
    mongo: MongoServer | None,
    redis: RedisServer | None,
    api_ready: bool,
) -> str:
    provider = env.get("PAYOUT_PROVIDER_URL", "")
    provider_note = ("bundled simulator: pays after PROVIDER_SIM_DELAY_SECONDS, fails amounts ending in 13"
                     if env.get("PURSER_PROVIDER_SIM") else "external")
    api = _api_base(env)
    user, _, password = env.get("FLOWER_BASIC_AUTH", "").partition(":")
    flower = _flower_base(env)
    mongo_note = f"SecantusDB, data {mongo.storage_path}" if mongo else "external"
    redis_note = f"data {redis.data_dir}" if redis else "external"
    store_logs = ", ".join(f"{p.name} {p.log_path}" for p in (mongo, redis) if p is not None and p.log_path is not None)
    rule = "=" * 78
    lines = [
        rule,
        f"  Purser dev stack  (APP_ENV={env.get('APP_ENV')}, var {var_dir})",
        f"  API        {api}" + ("" if api_ready else "   (not answering yet, see the web lines)"),
        f"  health     {api}/api/health   ready: {api}/api/health/ready",
        f"  OpenAPI    {api}/api/openapi.json",
        f"  Flower     {flower}   user {user}   password {password}",
        f"  MongoDB    {_mask(env.get('MONGODB_URI', ''))}   ({mongo_note})",
        f"  Redis      {_mask(env.get('REDIS_URL', ''))}   ({redis_note})",
        f"  Payouts    {provider}   ({provider_note})",
        f"  metrics    {api}/metrics   workers: {_metrics_ports(env)}",
        "  logs       web, worker, housekeeping, webhooks, beat, flower: this terminal"
        + (f"; {store_logs}" if store_logs else ""),
        "  Ctrl-C to stop (data in var is kept for the next start)",
        rule,
    ]
    return "\n".join(lines)


def build_env(root: Path, environ: Mapping[str, str]) -> tuple[dict[str, str], Path]:
    env = dict(environ)
    if not env.get("APP_ENV"):
        # Unset means production to every Purser process (fail closed); the dev stack
        # says development explicitly (generated dev secrets, debug route and tasks).
        env["APP_ENV"] = "development"
    var_dir = Path(env.get("PURSER_VAR_DIR") or root / "var").absolute()
    env["PURSER_VAR_DIR"] = str(var_dir)
    # Procfile commands (gunicorn, celery) are the venv's console scripts, and
    # `make run` calls .venv/bin/python without activating the venv.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", os.defpath)])
    # The ports are chosen by devstack/ports.py (assign_ports), after this.
    # Job webhooks to a receiver on this machine (docs/webhooks.md); production refuses them.
    env.setdefault("WEBHOOK_ALLOW_PRIVATE", "true")
    # Without it Python children block-buffer into honcho's pipe and logs lag.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env, var_dir


def validate(env: Mapping[str, str], var_dir: Path) -> str | None:
    """The one-line configuration error, or None when the settings load."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import infra.config as config

    try:
        config.load_settings({**env, "PURSER_VAR_DIR": str(var_dir)})
    except config.ConfigError as exc:
        return f"purser: configuration error: {exc}"
    return None


def run_migrations(root: Path, env: Mapping[str, str]) -> int:
    if not (root / "migrations" / "__main__.py").exists():
        _say("warning: migrations/__main__.py not found; skipping migrations")
        return 0
    _say("applying migrations")
    return subprocess.run([sys.executable, "-m", "migrations", "up"], env=dict(env), cwd=root).returncode


def embedded_services(env: dict[str, str], var_dir: Path) -> tuple[MongoServer | None, RedisServer | None,
                                                                  ProviderSimProcess | None]:
    """The stores and the provider simulator this stack starts itself (none is started
    yet): one for each of ``MONGODB_URI``, ``REDIS_URL``, ``PAYOUT_PROVIDER_URL`` left
    unset, whose address goes into ``env``; Flower's password is made here too."""
    mongo = None if env.get("MONGODB_URI") else MongoServer(var_dir / "mongo")
    redis = None if env.get("REDIS_URL") else RedisServer(var_dir / "redis")
    if mongo is not None:
        env["MONGODB_URI"] = mongo.uri
    if redis is not None:
        env["REDIS_URL"] = redis.url
    if not env.get("FLOWER_BASIC_AUTH"):
        env["FLOWER_BASIC_AUTH"] = flower_basic_auth(var_dir)
    sim = None
    if not env.get("PAYOUT_PROVIDER_URL"):
        # The bundled payout provider simulator; its webhooks go to this stack's API.
        sim = ProviderSimProcess(env, var_dir / "provider-sim.log", _api_base(env),
                                 port=int(env["PROVIDER_SIM_PORT"]))
        env["PAYOUT_PROVIDER_URL"] = sim.url
        env["PURSER_PROVIDER_SIM"] = "1"
    return mongo, redis, sim


def run(root: Path = ROOT, environ: Mapping[str, str] | None = None, demo: bool = False) -> int:
    """Run the dev stack until Ctrl-C/SIGTERM or until honcho exits; returns the exit status.

    ``demo``: seed the demo data once the stack is ready (:mod:`devstack.demo`).
    """
    env, var_dir = build_env(root, os.environ if environ is None else environ)
    try:
        log_format = choose_format(env, sys.stdout)
    except ValueError as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 2
    var_dir.mkdir(parents=True, exist_ok=True)
    try:
        for note in assign_ports(env):
            _say(note)
    except PortBusy as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 2

    mongo, redis, sim = embedded_services(env, var_dir)
    problem = validate(env, var_dir)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2

    signals = _Signals()
    signals.install()
    started: list[ManagedProcess] = []
    status = 0
    try:
        for store in (mongo, redis):
            if store is not None:
                _say(f"starting {store.name} on port {store.port}")
                started.append(store.start())
        status = run_migrations(root, env)
        if status != 0:
            _say(f"migrations failed with status {status}; stopping")
            return status
        if sim is not None:
            _say(f"starting the payout provider simulator on {sim.url}")
            started.append(sim.start())
        if signals.requested:
            return 0
        command = [sys.executable, "-m", "honcho", "start", "-f", "Procfile"]
        sink = None
        if log_format == "console":
            command.append("--no-colour")  # the renderer colours, and only on a terminal
            sink = _console_sink(ConsoleRenderer(colour=use_colour(env, sys.stdout)))
        honcho = ManagedProcess(command, log_path=None, env=env, cwd=root, name="honcho", line_sink=sink)
        honcho.stop_timeout = HONCHO_STOP_TIMEOUT
        started.append(honcho.start())
        signals.interruptible = False
        status = supervise(honcho, [p for p in (mongo, redis) if p is not None], env, var_dir, signals, demo=demo)
    except KeyboardInterrupt:
        status = 0
    except ProcessStartError as exc:
        _say(str(exc))
        status = 1
    finally:
        signals.interruptible = False
        if started:
            _say("stopping " + ", ".join(p.name for p in reversed(started)))
        stop_all(started)
        if started:
            _say("stopped")
    return status


def supervise(
    honcho: ManagedProcess,
    stores: list[MongoServer | RedisServer],
    env: Mapping[str, str],
    var_dir: Path,
    signals: _Signals,
    demo: bool = False,
) -> int:
    shown = False
    since = time.monotonic()
    health = f"{_api_base(env)}/api/health"
    seeding: threading.Thread | None = None
    while not signals.requested:
        if not honcho.alive:
            code = honcho.returncode
            _say(f"honcho exited by itself (status {code}); stopping the stores")
            return code or 1
        for store in stores:
            if not store.alive:
                _say(f"{store.name} exited unexpectedly (status {store.returncode}); see {store.log_path}")
                return 1
        if not shown:
            ready = _answers(health)
            if ready or time.monotonic() - since > BANNER_WAIT:
                _emit(banner(env, var_dir, *_split(stores), api_ready=ready))
                shown = True
        if shown and demo and seeding is None:
            # A thread: seeding waits for a worker and for settlement, while this loop
            # must keep watching the processes and the signals.
            seeding = threading.Thread(target=seed_demo, args=(env,), name="demo-seed", daemon=True)
            seeding.start()
        time.sleep(0.5)
    return 0


def _console_sink(renderer: ConsoleRenderer) -> Callable[[str], None]:
    def sink(line: str) -> None:
        rendered = renderer.render(line)
        if rendered is not None:
            _emit(rendered)

    return sink


def seed_demo(env: Mapping[str, str]) -> None:
    """Seed the demo data through the stack's API and print who is who and what to try."""
    _say("seeding the demo data (accounts, content, plan, funded fans)")
    try:
        seeded = demo_data.seed(_api_base(env), env, flower_url=_flower_base(env))
        env_file = demo_data.write_env_file(seeded)
    except Exception as exc:  # noqa: BLE001 - report any failure and keep the stack up for a look
        _say(f"demo seeding failed: {type(exc).__name__}: {exc}")
        return
    _emit(demo_data.report(seeded, env_file))


def _split(stores: list[MongoServer | RedisServer]) -> tuple[MongoServer | None, RedisServer | None]:
    mongo = next((s for s in stores if isinstance(s, MongoServer)), None)
    redis = next((s for s in stores if isinstance(s, RedisServer)), None)
    return mongo, redis
