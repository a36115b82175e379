"""All configuration: one table of variables, read once from the environment at start-up.

Every process (web, gunicorn's master, worker, beat, CLI) calls :func:`get_settings`
from its entry point; no module reads the environment at import. Each row of
:data:`VARIABLES` says where a :class:`Settings` field comes from: the variable,
its parser, its default and its production rule. A bad value raises
:class:`ConfigError` naming the variable; entry points turn it into a one-line
message and exit status 2 instead of a traceback.

``APP_ENV`` unset means ``production`` (fail closed): store URLs and secrets are
required, test-only switches are refused and nothing is generated. The dev
launcher, the test suites and the benchmark stack set ``development``/``test``.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent

ENVIRONMENTS = ("development", "test", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
WEB_WORKER_CLASSES = ("gevent", "gthread", "sync")
_RATE_RE = re.compile(r"^\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day)s?$")

# With APP_ENV unset a process runs as production: secrets and store URLs are
# required and nothing is generated (fail closed). Dev and test set it explicitly.
DEFAULT_APP_ENV = "production"

# OWASP Password Storage Cheat Sheet, argon2id minimum: m = 19 MiB, t = 2, p = 1.
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1


class ConfigError(Exception):
    """A configuration variable is missing or invalid."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process; built only by :func:`load_settings`.

    Fields carry no defaults: those live in :data:`VARIABLES`, once.
    """

    app_env: str
    var_dir: Path
    duplicate_doorbells: bool
    mongodb_uri: str
    mongodb_db: str
    redis_url: str
    jwt_secret: str = field(repr=False)
    jwt_issuer: str
    jwt_ttl_seconds: int
    provider_webhook_secret: str = field(repr=False)
    flower_basic_auth: str | None = field(repr=False)
    sentry_dsn: str | None
    release: str
    log_level: str
    log_file: str | None
    log_file_max_bytes: int
    log_file_backups: int
    rate_limit_enabled: bool
    rate_limits_free: str
    rate_limits_premium: str
    rate_limits_creator: str
    rate_limits_auth: str
    rate_limits_login_email: str
    rate_limits_login_address: str
    rate_limits_webhook: str
    trusted_proxies: int
    role_cache_seconds: int
    argon2_memory_kib: int
    argon2_time_cost: int
    argon2_parallelism: int
    password_hash_concurrency: int
    idempotency_enabled: bool
    idempotency_ttl_hours: int
    job_wait_max_per_user: int
    ledger_partitions: int
    settle_batch_max: int
    settle_slice_seconds: float
    backlog_max_seconds: float
    backlog_min_jobs: int
    subscription_tick_seconds: int
    subscription_chunk: int
    sweep_interval_seconds: int
    sweep_age_seconds: int
    reconcile_interval_seconds: int
    payout_provider_url: str | None
    payout_min_amount: int
    payout_roles: tuple[str, ...]
    payout_hold_ttl_hours: int
    payout_resolve_after_seconds: int
    payout_tick_seconds: int
    history_margin_seconds: int
    rollup_interval_seconds: int
    statement_tick_seconds: int
    payout_schedule_tick_seconds: int
    provider_sim_delay_seconds: float
    webhook_allow_private: bool
    webhook_timeout_seconds: float
    webhook_backoff_seconds: tuple[float, ...]
    webhook_tick_seconds: int
    webhook_secret_grace_hours: int
    console_session_idle_seconds: int
    console_session_max_seconds: int
    metrics_port: int
    metrics_address: str
    prometheus_multiproc_dir: str | None
    port: int
    web_bind: str | None
    web_concurrency: int
    web_threads: int
    web_worker_class: str
    web_worker_connections: int

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def bind(self) -> str:
        """Gunicorn's listening address: ``WEB_BIND``, else 127.0.0.1:``PORT``."""
        return self.web_bind or f"127.0.0.1:{self.port}"


# --- parsers: a non-empty raw value -> the field's value; ValueError carries the problem ---

Parser = Callable[[str], Any]


def text(raw: str) -> str:
    return raw.strip()


def secret(raw: str) -> str:
    """Kept exactly as given (never stripped)."""
    return raw


def path(raw: str) -> Path:
    return Path(raw.strip())


def boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def integer(lo: int, hi: int) -> Parser:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}, got {value}")
        return value
    return parse


def choice(options: tuple[str, ...], *, upper: bool = False) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return value
    return parse


def url(*schemes: str) -> Parser:
    def parse(raw: str) -> str:
        value = raw.strip()
        if not value.startswith(tuple(f"{s}://" for s in schemes)):
            raise ValueError("must start with " + " or ".join(f"{s}://" for s in schemes))
        return value
    return parse


def roles(raw: str) -> tuple[str, ...]:
    """A comma-separated list of user roles (at least one)."""
    known = ("free", "premium", "creator", "admin")
    values = tuple(dict.fromkeys(r.strip().lower() for r in raw.split(",") if r.strip()))
    if not values or any(v not in known for v in values):
        raise ValueError(f"expected a comma-separated list of {', '.join(known)}, got {raw!r}")
    return values


def seconds(lo: float, hi: float) -> Parser:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number of seconds, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}, got {value:g}")
        return value
    return parse


def delays(raw: str) -> tuple[float, ...]:
    """A comma-separated list of delays in seconds (a retry schedule), at least one."""
    try:
        values = tuple(float(v) for v in raw.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated seconds like '5,300,1800', got {raw!r}") from None
    if not values or len(values) > 20 or any(not 0 < v <= 86400 for v in values):
        raise ValueError(f"expected 1 to 20 delays between 0 and 86400 seconds, got {raw!r}")
    return values


def rate(raw: str) -> str:
    value = raw.strip()
    if not _RATE_RE.match(value):
        raise ValueError(f"expected a limit like '10/minute', got {value!r}")
    return value


def user_password(raw: str) -> str:
    if ":" not in raw or raw.startswith(":"):
        raise ValueError("expected user:password")
    return raw


def sentry_dsn(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) DSN")
    return value


# --- production rules: (value or None when unset) -> the problem, or None ------------------

Rule = Callable[[Any], str | None]
_PROD = "(APP_ENV unset = production)"


def required(min_length: int = 0) -> Rule:
    def rule(value: Any) -> str | None:
        if value is None:
            return f"is required in production {_PROD}"
        if len(value) < min_length:
            return f"must be at least {min_length} characters in production"
        return None
    return rule


def refused(value: Any) -> str | None:
    """Test-only switches: set at all (even to false) is refused in production."""
    return None if value is None else f"is a test-only switch; unset it in production {_PROD}"


# --- defaults computed from earlier rows ----------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """A default computed from the fields read before it (outside production only)."""

    compute: Callable[[Mapping[str, Any]], Any]


def dev_secret(name: str, nbytes: int = 32) -> Derived:
    """A secret generated once under ``var_dir/secrets`` so restarts keep sessions valid."""
    def compute(values: Mapping[str, Any]) -> str:
        secret_path = values["var_dir"] / "secrets" / name
        if secret_path.exists():
            return secret_path.read_text().strip()
        secret_path.parent.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(nbytes)
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(value)
        return value
    return Derived(compute)


@dataclass(frozen=True)
class Var:
    """One row of the table: ``Settings.<name>`` comes from ``variable``."""

    name: str
    variable: str | None  # None: a constant, not configurable
    parse: Parser
    default: Any
    production: Rule | None = None


# The whole configuration. Order matters only for Derived defaults (var_dir before the
# secrets) and for which missing variable an empty production environment names first.
VARIABLES: tuple[Var, ...] = (
    Var("var_dir", "PURSER_VAR_DIR", path, Derived(lambda _: PROJECT_ROOT / "var")),
    Var("duplicate_doorbells", "PURSER_DUPLICATE_DOORBELLS", boolean, False, production=refused),
    # stores
    Var("mongodb_uri", "MONGODB_URI", url("mongodb", "mongodb+srv"),
        "mongodb://127.0.0.1:27017/?retryWrites=false", production=required()),
    Var("mongodb_db", "MONGODB_DB", text, "purser"),
    Var("redis_url", "REDIS_URL", url("redis", "rediss", "unix"), "redis://127.0.0.1:6379/0",
        production=required()),
    # secrets
    Var("jwt_secret", "JWT_SECRET", secret, dev_secret("jwt_secret"), production=required(min_length=32)),
    Var("jwt_issuer", None, text, "purser"),
    Var("jwt_ttl_seconds", "JWT_TTL_SECONDS", integer(60, 86400), 3600),
    Var("provider_webhook_secret", "PROVIDER_WEBHOOK_SECRET", secret, dev_secret("provider_webhook_secret"),
        production=required(min_length=16)),
    Var("flower_basic_auth", "FLOWER_BASIC_AUTH", user_password, None),
    # observability
    Var("sentry_dsn", "SENTRY_DSN", sentry_dsn, None),
    Var("release", "PURSER_RELEASE", text, "dev"),
    Var("log_level", "LOG_LEVEL", choice(LOG_LEVELS, upper=True), "INFO"),
    Var("log_file", "LOG_FILE", text, None),
    Var("log_file_max_bytes", "LOG_FILE_MAX_BYTES", integer(1024, 2**40), 50 * 2**20),
    Var("log_file_backups", "LOG_FILE_BACKUPS", integer(0, 1000), 5),
    Var("metrics_port", "WORKER_METRICS_PORT", integer(0, 65535), 9808),
    Var("metrics_address", "WORKER_METRICS_ADDRESS", text, "127.0.0.1"),
    Var("prometheus_multiproc_dir", "PROMETHEUS_MULTIPROC_DIR", text, None),
    # request admission
    Var("rate_limit_enabled", "RATE_LIMIT_ENABLED", boolean, True),
    Var("rate_limits_free", "RATE_LIMITS_FREE", rate, "10/minute"),
    Var("rate_limits_premium", "RATE_LIMITS_PREMIUM", rate, "100/minute"),
    Var("rate_limits_creator", "RATE_LIMITS_CREATOR", rate, "500/minute"),
    Var("rate_limits_auth", "RATE_LIMITS_AUTH", rate, "5/minute"),
    Var("rate_limits_login_email", "RATE_LIMITS_LOGIN_EMAIL", rate, "5/15minutes"),
    Var("rate_limits_login_address", "RATE_LIMITS_LOGIN_ADDRESS", rate, "100/15minutes"),
    Var("rate_limits_webhook", "RATE_LIMITS_WEBHOOK", rate, "600/minute"),
    Var("trusted_proxies", "TRUSTED_PROXIES", integer(0, 10), 0),
    Var("role_cache_seconds", "ROLE_CACHE_SECONDS", integer(0, 5), 5),
    # argon2 needs 8 KiB per lane (at most 64 lanes = 512 KiB); below 1 MiB is no protection.
    Var("argon2_memory_kib", "ARGON2_MEMORY_KIB", integer(1024, 4 * 2**20), ARGON2_MEMORY_KIB),
    Var("argon2_time_cost", "ARGON2_TIME_COST", integer(1, 100), ARGON2_TIME_COST),
    Var("argon2_parallelism", "ARGON2_PARALLELISM", integer(1, 64), ARGON2_PARALLELISM),
    Var("password_hash_concurrency", "PASSWORD_HASH_CONCURRENCY", integer(1, 256), 2),
    Var("idempotency_enabled", "IDEMPOTENCY_ENABLED", boolean, True),
    Var("idempotency_ttl_hours", "IDEMPOTENCY_TTL_HOURS", integer(1, 24 * 30), 24),
    Var("job_wait_max_per_user", "JOB_WAIT_MAX_PER_USER", integer(0, 1000), 5),
    # settlement and beat
    Var("ledger_partitions", "LEDGER_PARTITIONS", integer(1, 1024), 8),
    Var("settle_batch_max", "SETTLE_BATCH_MAX", integer(1, 5000), 200),
    # A settle task yields its process after this long so every partition with queued jobs
    # gets a turn while the pool has fewer processes than partitions (issue 22).
    Var("settle_slice_seconds", "SETTLE_SLICE_SECONDS", seconds(0.1, 60), 0.5),
    # Load shedding: a partition whose queued jobs exceed what it settles in this many
    # seconds (its own recent rate, never below BACKLOG_MIN_JOBS) refuses new jobs with
    # 503 BACKLOG_FULL. 0 turns the limit off.
    Var("backlog_max_seconds", "BACKLOG_MAX_SECONDS", seconds(0, 3600), 5.0),
    Var("backlog_min_jobs", "BACKLOG_MIN_JOBS", integer(1, 1_000_000), 20),
    Var("subscription_tick_seconds", "SUBSCRIPTION_TICK_SECONDS", integer(1, 3600), 60),
    Var("subscription_chunk", "SUBSCRIPTION_CHUNK", integer(1, 10000), 500),
    Var("sweep_interval_seconds", "SWEEP_INTERVAL_SECONDS", integer(1, 3600), 5),
    Var("sweep_age_seconds", "SWEEP_AGE_SECONDS", integer(0, 3600), 3),
    Var("reconcile_interval_seconds", "RECONCILE_INTERVAL_SECONDS", integer(5, 86400), 300),
    # payouts (money out): the provider adapter, admission and the beat tick
    Var("payout_provider_url", "PAYOUT_PROVIDER_URL", url("http", "https"), None, production=required()),
    Var("payout_min_amount", "PAYOUT_MIN_AMOUNT", integer(1, 10**9), 1000),
    Var("payout_roles", "PAYOUT_ROLES", roles, ("creator",)),
    Var("payout_hold_ttl_hours", "PAYOUT_HOLD_TTL_HOURS", integer(1, 24 * 30), 24),
    Var("payout_resolve_after_seconds", "PAYOUT_RESOLVE_AFTER_SECONDS", integer(1, 86400), 120),
    Var("payout_tick_seconds", "PAYOUT_TICK_SECONDS", integer(1, 3600), 30),
    # money over time (issue 25): checkpoints, statements, scheduled payouts
    # Only ledger dates older than this are final: longer than any transaction may live
    # (MongoDB aborts older ones after 60 s), so no entry can still appear before it.
    Var("history_margin_seconds", "HISTORY_MARGIN_SECONDS", integer(61, 86400), 120),
    Var("rollup_interval_seconds", "ROLLUP_INTERVAL_SECONDS", integer(1, 3600), 60),
    Var("statement_tick_seconds", "STATEMENT_TICK_SECONDS", integer(1, 86400), 3600),
    Var("payout_schedule_tick_seconds", "PAYOUT_SCHEDULE_TICK_SECONDS", integer(1, 86400), 300),
    Var("provider_sim_delay_seconds", "PROVIDER_SIM_DELAY_SECONDS", seconds(0, 3600), 1.0),
    # job webhooks (services/webhook_*.py): SSRF guard, delivery timeout, retry schedule, beat tick
    Var("webhook_allow_private", "WEBHOOK_ALLOW_PRIVATE", boolean, False),
    Var("webhook_timeout_seconds", "WEBHOOK_TIMEOUT_SECONDS", seconds(1, 60), 15.0),
    Var("webhook_backoff_seconds", "WEBHOOK_BACKOFF_SECONDS", delays, (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0)),
    Var("webhook_tick_seconds", "WEBHOOK_TICK_SECONDS", integer(1, 3600), 5),
    Var("webhook_secret_grace_hours", "WEBHOOK_SECRET_GRACE_HOURS", integer(0, 24 * 30), 24),
    # operator console (api/console): a session ends after this long idle, and this long after login
    Var("console_session_idle_seconds", "CONSOLE_SESSION_IDLE_SECONDS", integer(1, 86400), 1800),
    Var("console_session_max_seconds", "CONSOLE_SESSION_MAX_SECONDS", integer(1, 7 * 86400), 8 * 3600),
    # web tier (gunicorn.conf.py)
    Var("port", "PORT", integer(1, 65535), 5000),
    Var("web_bind", "WEB_BIND", text, None),
    Var("web_concurrency", "WEB_CONCURRENCY", integer(1, 256), 2),
    Var("web_threads", "WEB_THREADS", integer(1, 1000), 8),
    Var("web_worker_class", "WEB_WORKER_CLASS", choice(WEB_WORKER_CLASSES), "gevent"),
    Var("web_worker_connections", "WEB_WORKER_CONNECTIONS", integer(1, 100_000), 1000),
)


def _read(var: Var, raw: str | None, prod: bool, values: Mapping[str, Any]) -> Any:
    unset = raw is None or raw.strip() == ""
    if unset:
        if prod and var.production is not None and (problem := var.production(None)):
            raise ConfigError(str(var.variable), problem)
        return var.default.compute(values) if isinstance(var.default, Derived) else var.default
    assert raw is not None and var.variable is not None
    try:
        value = var.parse(raw)
    except ValueError as exc:
        raise ConfigError(var.variable, str(exc)) from None
    if prod and var.production is not None and (problem := var.production(value)):
        raise ConfigError(var.variable, problem)
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate :class:`Settings` from ``env`` (default ``os.environ``), row by row."""
    env = os.environ if env is None else env
    app_env = (env.get("APP_ENV") or "").strip().lower() or DEFAULT_APP_ENV
    if app_env not in ENVIRONMENTS:
        raise ConfigError("APP_ENV", f"must be one of {', '.join(ENVIRONMENTS)}, got {app_env!r}")
    prod = app_env == "production"
    values: dict[str, Any] = {"app_env": app_env}
    for var in VARIABLES:
        raw = env.get(var.variable) if var.variable is not None else None
        values[var.name] = _read(var, raw, prod, values)
    return Settings(**values)


def table() -> list[tuple[str, str | None, Any, str]]:
    """(field, variable, default, production rule) per row, for docs and tests."""
    rows = []
    for var in VARIABLES:
        default = "computed" if isinstance(var.default, Derived) else var.default
        rule = getattr(var.production, "__qualname__", "") if var.production else ""
        rows.append((var.name, var.variable, default, rule.split(".")[0]))
    return rows


assert {f.name for f in fields(Settings)} == {"app_env", *(v.name for v in VARIABLES)}, "table and Settings differ"

_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, loaded on first use (never at import)."""
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def settings_loaded() -> bool:
    """Whether this process has read its configuration yet (import-time checks use it)."""
    return _settings is not None


def reset_settings() -> None:
    """Forget cached settings (tests change the environment between cases)."""
    global _settings
    _settings = None


def settings_or_exit(status: int = 2) -> Settings:
    """Entry-point helper: one line on stderr and exit ``status`` (2) on a configuration error."""
    try:
        return get_settings()
    except ConfigError as exc:
        print(f"purser: configuration error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(status) from None
