"""All configuration: one table of variables, read once from the environment at start-up.

Every process (web, gunicorn's master, worker, beat, CLI) calls :func:`get_settings`
from its entry point; no module reads the environment at import. Each row of
:data:`infra.config_table.VARIABLES` says where a :class:`Settings` field comes from:
the variable, its parser (``infra/config_parsers.py``), its default and its production
rule. This module reads the rows and keeps the process's settings. A bad value raises
:class:`ConfigError` naming the variable; entry points turn it into a one-line
message and exit status 2 instead of a traceback.

``APP_ENV`` unset means ``production`` (fail closed): store URLs and secrets are
required, test-only switches are refused and nothing is generated. The dev
launcher, the test suites and the benchmark stack set ``development``/``test``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from infra.config_parsers import Derived
from infra.config_table import DEFAULT_APP_ENV, ENVIRONMENTS, VARIABLES, Var


class ConfigError(Exception):
    """A configuration variable is missing or invalid."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process; built only by :func:`load_settings`.

    Fields carry no defaults: those live in :data:`infra.config_table.VARIABLES`, once.
    """

    app_env: str
    var_dir: Path
    duplicate_doorbells: bool
    fault_deaf_consumer: bool
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
    idempotency_expiry_seconds: int
    job_wait_max_per_user: int
    accept_linger_ms: float
    accept_batch_max: int
    ledger_partitions: int
    settle_batch_max: int
    settle_slice_seconds: float
    backlog_max_seconds: float
    backlog_min_jobs: int
    subscription_tick_seconds: int
    subscription_chunk: int
    sweep_interval_seconds: int
    sweep_age_seconds: int
    consumer_stall_seconds: float
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
