"""All configuration, read once from the environment and validated at start-up.

Every process (web, worker, beat, CLI) calls :func:`get_settings`. A bad value
raises :class:`ConfigError` naming the variable; entry points turn it into a
one-line message and exit status 2 instead of a traceback.

``APP_ENV`` unset means ``production`` (fail closed): store URLs and secrets are
required and nothing is generated. The dev launcher, the test suites and the
benchmark stack set ``development``/``test`` explicitly.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PURSER_VAR_DIR", PROJECT_ROOT / "var"))

ENVIRONMENTS = ("development", "test", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_RATE_RE = re.compile(r"^\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day)s?$")


class ConfigError(Exception):
    """A configuration variable is missing or invalid."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


# With APP_ENV unset a process runs as production: secrets and store URLs are
# required and nothing is generated (fail closed). Dev and test set it explicitly.
DEFAULT_APP_ENV = "production"

# Test-only switches that must never reach a production process.
TEST_ONLY_VARIABLES = ("PURSER_DUPLICATE_DOORBELLS",)

# OWASP Password Storage Cheat Sheet, argon2id minimum: m = 19 MiB, t = 2, p = 1.
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1


@dataclass(frozen=True)
class Settings:
    app_env: str = DEFAULT_APP_ENV
    mongodb_uri: str = "mongodb://127.0.0.1:27017/?retryWrites=false"
    mongodb_db: str = "purser"
    redis_url: str = "redis://127.0.0.1:6379/0"
    jwt_secret: str = field(default="", repr=False)
    jwt_issuer: str = "purser"
    jwt_ttl_seconds: int = 3600
    sentry_dsn: str | None = None
    release: str = "dev"
    log_level: str = "INFO"
    log_file: str | None = None
    log_file_max_bytes: int = 50 * 2**20
    log_file_backups: int = 5
    rate_limit_enabled: bool = True
    rate_limits_free: str = "10/minute"
    rate_limits_premium: str = "100/minute"
    rate_limits_creator: str = "500/minute"
    rate_limits_auth: str = "5/minute"
    rate_limits_login_email: str = "5/15minutes"
    rate_limits_login_address: str = "100/15minutes"
    rate_limits_webhook: str = "600/minute"
    trusted_proxies: int = 0
    idempotency_enabled: bool = True
    idempotency_ttl_hours: int = 24
    ledger_partitions: int = 8
    settle_batch_max: int = 200
    provider_webhook_secret: str = field(default="", repr=False)
    flower_basic_auth: str | None = field(default=None, repr=False)
    subscription_tick_seconds: int = 60
    subscription_chunk: int = 500
    sweep_interval_seconds: int = 5
    sweep_age_seconds: int = 3
    reconcile_interval_seconds: int = 300
    metrics_port: int = 9808
    metrics_address: str = "127.0.0.1"
    max_amount: int = 1_000_000_000
    argon2_memory_kib: int = ARGON2_MEMORY_KIB
    argon2_time_cost: int = ARGON2_TIME_COST
    argon2_parallelism: int = ARGON2_PARALLELISM
    password_hash_concurrency: int = 2
    role_cache_seconds: int = 5

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, f"expected an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(name, f"must be between {lo} and {hi}, got {value}")
    return value


def _rate(env: Mapping[str, str], name: str, default: str) -> str:
    raw = (env.get(name) or default).strip()
    if not _RATE_RE.match(raw):
        raise ConfigError(name, f"expected a limit like '10/minute', got {raw!r}")
    return raw


def _dev_secret(name: str, nbytes: int = 32) -> str:
    """A secret generated once and kept under var/ so restarts keep sessions valid."""
    path = VAR_DIR / "secrets" / name
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build and validate :class:`Settings` from ``env`` (default ``os.environ``)."""
    env = os.environ if env is None else env
    app_env = (env.get("APP_ENV") or "").strip().lower() or DEFAULT_APP_ENV
    if app_env not in ENVIRONMENTS:
        raise ConfigError("APP_ENV", f"must be one of {', '.join(ENVIRONMENTS)}, got {app_env!r}")
    prod = app_env == "production"
    if prod:
        for name in TEST_ONLY_VARIABLES:
            if env.get(name):
                raise ConfigError(name, "is a test-only switch; unset it in production (APP_ENV unset = production)")

    mongodb_uri = (env.get("MONGODB_URI") or "").strip()
    if not mongodb_uri:
        if prod:
            raise ConfigError("MONGODB_URI", "is required in production (APP_ENV unset = production)")
        mongodb_uri = Settings.mongodb_uri
    if not mongodb_uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError("MONGODB_URI", "must start with mongodb:// or mongodb+srv://")

    redis_url = (env.get("REDIS_URL") or "").strip()
    if not redis_url:
        if prod:
            raise ConfigError("REDIS_URL", "is required in production (APP_ENV unset = production)")
        redis_url = Settings.redis_url
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("REDIS_URL", "must start with redis://, rediss:// or unix://")

    jwt_secret = env.get("JWT_SECRET") or ""
    if prod:
        if not jwt_secret:
            raise ConfigError("JWT_SECRET", "is required in production (APP_ENV unset = production)")
        if len(jwt_secret) < 32:
            raise ConfigError("JWT_SECRET", "must be at least 32 characters in production")
    elif not jwt_secret:
        jwt_secret = _dev_secret("jwt_secret")

    webhook_secret = env.get("PROVIDER_WEBHOOK_SECRET") or ""
    if not webhook_secret:
        if prod:
            raise ConfigError("PROVIDER_WEBHOOK_SECRET", "is required in production (APP_ENV unset = production)")
        webhook_secret = _dev_secret("provider_webhook_secret")
    elif prod and len(webhook_secret) < 16:
        raise ConfigError("PROVIDER_WEBHOOK_SECRET", "must be at least 16 characters in production")

    flower_auth = env.get("FLOWER_BASIC_AUTH") or None
    if flower_auth is not None and (":" not in flower_auth or flower_auth.startswith(":")):
        raise ConfigError("FLOWER_BASIC_AUTH", "expected user:password")

    argon2_parallelism = _int(env, "ARGON2_PARALLELISM", ARGON2_PARALLELISM, 1, 64)
    # argon2 needs at least 8 KiB per lane; below 1 MiB is no protection at all.
    argon2_memory_kib = _int(env, "ARGON2_MEMORY_KIB", ARGON2_MEMORY_KIB, max(1024, 8 * argon2_parallelism), 4 * 2**20)

    log_level = (env.get("LOG_LEVEL") or "INFO").strip().upper()
    if log_level not in LOG_LEVELS:
        raise ConfigError("LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")

    sentry_dsn = (env.get("SENTRY_DSN") or "").strip() or None
    if sentry_dsn is not None and not sentry_dsn.startswith(("http://", "https://")):
        raise ConfigError("SENTRY_DSN", "must be an http(s) DSN")

    return Settings(
        app_env=app_env,
        mongodb_uri=mongodb_uri,
        mongodb_db=(env.get("MONGODB_DB") or "purser").strip(),
        redis_url=redis_url,
        jwt_secret=jwt_secret,
        jwt_ttl_seconds=_int(env, "JWT_TTL_SECONDS", 3600, 60, 86400),
        sentry_dsn=sentry_dsn,
        release=(env.get("PURSER_RELEASE") or "dev").strip(),
        log_level=log_level,
        log_file=(env.get("LOG_FILE") or "").strip() or None,
        log_file_max_bytes=_int(env, "LOG_FILE_MAX_BYTES", 50 * 2**20, 1024, 2**40),
        log_file_backups=_int(env, "LOG_FILE_BACKUPS", 5, 0, 1000),
        rate_limit_enabled=_bool(env, "RATE_LIMIT_ENABLED", True),
        rate_limits_free=_rate(env, "RATE_LIMITS_FREE", "10/minute"),
        rate_limits_premium=_rate(env, "RATE_LIMITS_PREMIUM", "100/minute"),
        rate_limits_creator=_rate(env, "RATE_LIMITS_CREATOR", "500/minute"),
        rate_limits_auth=_rate(env, "RATE_LIMITS_AUTH", "5/minute"),
        rate_limits_login_email=_rate(env, "RATE_LIMITS_LOGIN_EMAIL", "5/15minutes"),
        rate_limits_login_address=_rate(env, "RATE_LIMITS_LOGIN_ADDRESS", "100/15minutes"),
        rate_limits_webhook=_rate(env, "RATE_LIMITS_WEBHOOK", "600/minute"),
        trusted_proxies=_int(env, "TRUSTED_PROXIES", 0, 0, 10),
        idempotency_enabled=_bool(env, "IDEMPOTENCY_ENABLED", True),
        idempotency_ttl_hours=_int(env, "IDEMPOTENCY_TTL_HOURS", 24, 1, 24 * 30),
        ledger_partitions=_int(env, "LEDGER_PARTITIONS", 8, 1, 1024),
        settle_batch_max=_int(env, "SETTLE_BATCH_MAX", 200, 1, 5000),
        provider_webhook_secret=webhook_secret,
        flower_basic_auth=flower_auth,
        subscription_tick_seconds=_int(env, "SUBSCRIPTION_TICK_SECONDS", 60, 1, 3600),
        subscription_chunk=_int(env, "SUBSCRIPTION_CHUNK", 500, 1, 10000),
        sweep_interval_seconds=_int(env, "SWEEP_INTERVAL_SECONDS", 5, 1, 3600),
        sweep_age_seconds=_int(env, "SWEEP_AGE_SECONDS", 3, 0, 3600),
        reconcile_interval_seconds=_int(env, "RECONCILE_INTERVAL_SECONDS", 300, 5, 86400),
        metrics_port=_int(env, "WORKER_METRICS_PORT", 9808, 0, 65535),
        metrics_address=(env.get("WORKER_METRICS_ADDRESS") or "127.0.0.1").strip(),
        max_amount=_int(env, "MAX_AMOUNT", 1_000_000_000, 1, 10**15),
        argon2_memory_kib=argon2_memory_kib,
        argon2_time_cost=_int(env, "ARGON2_TIME_COST", ARGON2_TIME_COST, 1, 100),
        argon2_parallelism=argon2_parallelism,
        password_hash_concurrency=_int(env, "PASSWORD_HASH_CONCURRENCY", 2, 1, 256),
        role_cache_seconds=_int(env, "ROLE_CACHE_SECONDS", 5, 0, 5),
    )


_settings: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, loaded on first use."""
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


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
