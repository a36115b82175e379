"""The configuration table: every variable, its parser, its default and its production rule.

Each row of :data:`VARIABLES` says where a :class:`~infra.config.Settings` field
comes from; :func:`infra.config.load_settings` reads the rows in order and
``infra/config_docs.py`` renders the production rules into ``docs/operations.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.config_parsers import (
    Derived,
    Parser,
    Rule,
    boolean,
    choice,
    delays,
    dev_secret,
    integer,
    milliseconds,
    path,
    rate,
    refused,
    required,
    roles,
    seconds,
    secret,
    sentry_dsn,
    text,
    url,
    user_password,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

ENVIRONMENTS = ("development", "test", "production")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
WEB_WORKER_CLASSES = ("gevent", "gthread", "sync")

# With APP_ENV unset a process runs as production: secrets and store URLs are
# required and nothing is generated (fail closed). Dev and test set it explicitly.
DEFAULT_APP_ENV = "production"

# OWASP Password Storage Cheat Sheet, argon2id minimum: m = 19 MiB, t = 2, p = 1.
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1


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
    Var("fault_deaf_consumer", "PURSER_FAULT_DEAF_CONSUMER", boolean, False, production=refused),
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
    # How often beat removes expired keys from their jobs (a key found expired by a request
    # before that is released on the spot, so this bounds storage, not correctness).
    Var("idempotency_expiry_seconds", "IDEMPOTENCY_EXPIRY_SECONDS", integer(1, 86400), 60),
    Var("job_wait_max_per_user", "JOB_WAIT_MAX_PER_USER", integer(0, 1000), 5),
    # Group commit at the door (services/group_commit.py): a web process gathers the jobs
    # accepted within this many ms into one insert (0 = off: one insert per request).
    Var("accept_linger_ms", "ACCEPT_LINGER_MS", milliseconds(0, 100), 2.0),
    Var("accept_batch_max", "ACCEPT_BATCH_MAX", integer(1, 1000), 64),
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
    # A worker whose queues have held messages this long while it received nothing and
    # had a process free restarts its consumer (workers/watchdog.py). 0 turns it off.
    Var("consumer_stall_seconds", "CONSUMER_STALL_SECONDS", seconds(0, 3600), 30.0),
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


def table() -> list[tuple[str, str | None, Any, str]]:
    """(field, variable, default, production rule) per row, for docs and tests."""
    rows = []
    for var in VARIABLES:
        default = "computed" if isinstance(var.default, Derived) else var.default
        rule = getattr(var.production, "__qualname__", "") if var.production else ""
        rows.append((var.name, var.variable, default, rule.split(".")[0]))
    return rows
