"""infra.config: validation of every variable class, dev secrets, and the exit-2 path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import infra.config as config
import infra.config_table as config_table
from infra.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
GOOD_SECRET = "x" * 48

PRODUCTION = {
    "APP_ENV": "production",
    "MONGODB_URI": "mongodb://db.internal:27017/?replicaSet=rs0",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "JWT_SECRET": GOOD_SECRET,
    "PROVIDER_WEBHOOK_SECRET": "w" * 32,
    "PAYOUT_PROVIDER_URL": "https://payouts.provider.example/v1",
}


_var_dir: Path | None = None


@pytest.fixture(autouse=True)
def var_dir(tmp_path: Path) -> Iterator[Path]:
    """``PURSER_VAR_DIR`` of every environment below (generated dev secrets land there)."""
    global _var_dir
    _var_dir = tmp_path
    yield tmp_path
    _var_dir = None


def _load(env: dict[str, str]) -> Settings:
    return load_settings({"PURSER_VAR_DIR": str(_var_dir), **env})


def _error(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(env)
    return info.value


def test_production_settings_load() -> None:
    settings = _load(PRODUCTION)
    assert settings.is_production
    assert settings.jwt_secret == GOOD_SECRET
    assert "x" * 48 not in repr(settings)


def test_production_without_jwt_secret_names_it() -> None:
    env = {k: v for k, v in PRODUCTION.items() if k != "JWT_SECRET"}
    error = _error(env)
    assert error.variable == "JWT_SECRET"
    assert "JWT_SECRET" in str(error)


def test_production_short_jwt_secret() -> None:
    error = _error({**PRODUCTION, "JWT_SECRET": "too-short"})
    assert error.variable == "JWT_SECRET"
    assert "32" in error.problem


@pytest.mark.parametrize("name", ["MONGODB_URI", "REDIS_URL", "PROVIDER_WEBHOOK_SECRET", "PAYOUT_PROVIDER_URL"])
def test_production_requires(name: str) -> None:
    env = {k: v for k, v in PRODUCTION.items() if k != name}
    assert _error(env).variable == name


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "1025", "1.5"])
def test_bad_ledger_partitions(raw: str, var_dir: Path) -> None:
    error = _error({"APP_ENV": "test", "LEDGER_PARTITIONS": raw})
    assert error.variable == "LEDGER_PARTITIONS"
    assert raw in str(error)


def test_ledger_partitions_parsed(var_dir: Path) -> None:
    assert _load({"APP_ENV": "test", "LEDGER_PARTITIONS": " 16 "}).ledger_partitions == 16
    assert _load({"APP_ENV": "test"}).ledger_partitions == 8


@pytest.mark.parametrize("raw", ["staging", "prod", "dev"])
def test_bad_app_env(raw: str) -> None:
    error = _error({"APP_ENV": raw})
    assert error.variable == "APP_ENV"
    assert raw in str(error)


def test_app_env_is_case_insensitive() -> None:
    assert _load({**PRODUCTION, "APP_ENV": "PRODUCTION"}).app_env == "production"


@pytest.mark.parametrize("raw", ["ten per minute", "10", "10/fortnight", "/minute", "-5/minute"])
def test_bad_rate_limits_free(raw: str, var_dir: Path) -> None:
    error = _error({"APP_ENV": "test", "RATE_LIMITS_FREE": raw})
    assert error.variable == "RATE_LIMITS_FREE"


@pytest.mark.parametrize("raw", ["10/minute", "10 per minute", "100/hours", "5/second"])
def test_good_rate_limits_free(raw: str, var_dir: Path) -> None:
    assert _load({"APP_ENV": "test", "RATE_LIMITS_FREE": raw}).rate_limits_free == raw


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        (" On ", True),
        ("false", False),
        ("0", False),
        ("no", False),
        ("OFF", False),
        ("", True),
    ],
)
def test_bool_parsing(raw: str, expected: bool, var_dir: Path) -> None:
    assert _load({"APP_ENV": "test", "RATE_LIMIT_ENABLED": raw}).rate_limit_enabled is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "tru"])
def test_bad_bool(raw: str, var_dir: Path) -> None:
    assert _error({"APP_ENV": "test", "RATE_LIMIT_ENABLED": raw}).variable == "RATE_LIMIT_ENABLED"


def test_development_generates_jwt_secret_once(var_dir: Path) -> None:
    first = _load({"APP_ENV": "development"})
    secret_file = var_dir / "secrets" / "jwt_secret"
    assert secret_file.exists()
    assert first.jwt_secret == secret_file.read_text().strip()
    assert len(first.jwt_secret) >= 32
    assert secret_file.stat().st_mode & 0o077 == 0, "secret readable by others"

    second = _load({"APP_ENV": "development"})
    assert second.jwt_secret == first.jwt_secret
    assert secret_file.read_text().strip() == first.jwt_secret


def test_development_explicit_jwt_secret_wins(var_dir: Path) -> None:
    assert _load({"APP_ENV": "development", "JWT_SECRET": "short-is-ok-in-dev"}).jwt_secret == (
        "short-is-ok-in-dev"
    )
    assert not (var_dir / "secrets" / "jwt_secret").exists()


def test_bad_flower_basic_auth(var_dir: Path) -> None:
    assert _error({"APP_ENV": "test", "FLOWER_BASIC_AUTH": "nopassword"}).variable == "FLOWER_BASIC_AUTH"


def test_bad_mongodb_uri(var_dir: Path) -> None:
    assert _error({"APP_ENV": "test", "MONGODB_URI": "postgres://x"}).variable == "MONGODB_URI"


def test_get_settings_is_cached_until_reset(monkeypatch: pytest.MonkeyPatch, var_dir: Path) -> None:
    monkeypatch.setenv("APP_ENV", "test")
    monkeypatch.setenv("PURSER_VAR_DIR", str(var_dir))
    monkeypatch.setenv("LEDGER_PARTITIONS", "3")
    config.reset_settings()
    try:
        assert config.get_settings().ledger_partitions == 3
        monkeypatch.setenv("LEDGER_PARTITIONS", "5")
        assert config.get_settings().ledger_partitions == 3
        config.reset_settings()
        assert config.get_settings().ledger_partitions == 5
    finally:
        config.reset_settings()


def test_settings_or_exit_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("JWT_SECRET", "APP_ENV", "MONGODB_URI", "REDIS_URL", "PROVIDER_WEBHOOK_SECRET")
    }
    env.update(
        APP_ENV="production",
        MONGODB_URI=PRODUCTION["MONGODB_URI"],
        REDIS_URL=PRODUCTION["REDIS_URL"],
        PROVIDER_WEBHOOK_SECRET=PRODUCTION["PROVIDER_WEBHOOK_SECRET"],
        PURSER_VAR_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "-c", "from infra.config import settings_or_exit; settings_or_exit()"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "JWT_SECRET" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# --- fail closed (issue 15) -------------------------------------------------------------


def test_app_env_unset_is_production(var_dir: Path) -> None:
    env = {k: v for k, v in PRODUCTION.items() if k != "APP_ENV"}
    settings = _load(env)
    assert settings.app_env == "production" and settings.is_production
    assert _load({**env, "APP_ENV": ""}).is_production
    assert not any(var_dir.iterdir()), "nothing may be generated in production"


@pytest.mark.parametrize("name", ["MONGODB_URI", "REDIS_URL", "JWT_SECRET", "PROVIDER_WEBHOOK_SECRET"])
def test_app_env_unset_requires_stores_and_secrets(name: str, var_dir: Path) -> None:
    env = {k: v for k, v in PRODUCTION.items() if k not in ("APP_ENV", name)}
    error = _error(env)
    assert error.variable == name and "production" in error.problem
    assert not (var_dir / "secrets").exists(), "no secret may be generated without APP_ENV"


def test_empty_environment_names_the_first_missing_variable(var_dir: Path) -> None:
    assert _error({}).variable == "MONGODB_URI"


def test_duplicate_doorbells_switch_is_refused_in_production() -> None:
    error = _error({**PRODUCTION, "PURSER_DUPLICATE_DOORBELLS": "1"})
    assert error.variable == "PURSER_DUPLICATE_DOORBELLS"
    env = {k: v for k, v in PRODUCTION.items() if k != "APP_ENV"}
    assert _error({**env, "PURSER_DUPLICATE_DOORBELLS": "1"}).variable == "PURSER_DUPLICATE_DOORBELLS"


def test_duplicate_doorbells_switch_is_allowed_in_test(var_dir: Path) -> None:
    assert _load({"APP_ENV": "test", "PURSER_DUPLICATE_DOORBELLS": "1"}).app_env == "test"


# --- password hashing, login limits, role cache -----------------------------------------


def test_argon2_defaults_are_the_owasp_minimum(var_dir: Path) -> None:
    settings = _load({"APP_ENV": "test"})
    assert (settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism) == (19456, 2, 1)
    assert settings.password_hash_concurrency == 2
    assert settings.role_cache_seconds == 5


def test_argon2_parameters_are_read_and_bounded(var_dir: Path) -> None:
    settings = _load({"APP_ENV": "test", "ARGON2_MEMORY_KIB": "47104", "ARGON2_TIME_COST": "1",
                              "ARGON2_PARALLELISM": "2", "PASSWORD_HASH_CONCURRENCY": "4"})
    assert (settings.argon2_memory_kib, settings.argon2_time_cost, settings.argon2_parallelism) == (47104, 1, 2)
    assert settings.password_hash_concurrency == 4
    for name, raw in (("ARGON2_MEMORY_KIB", "512"), ("ARGON2_TIME_COST", "0"), ("ARGON2_PARALLELISM", "0"),
                      ("PASSWORD_HASH_CONCURRENCY", "0"), ("ARGON2_MEMORY_KIB", "lots")):
        assert _error({"APP_ENV": "test", name: raw}).variable == name


def test_role_cache_is_at_most_five_seconds(var_dir: Path) -> None:
    assert _load({"APP_ENV": "test", "ROLE_CACHE_SECONDS": "0"}).role_cache_seconds == 0
    assert _error({"APP_ENV": "test", "ROLE_CACHE_SECONDS": "6"}).variable == "ROLE_CACHE_SECONDS"


def test_login_limits_have_defaults_and_are_validated(var_dir: Path) -> None:
    settings = _load({"APP_ENV": "test"})
    assert settings.rate_limits_login_email == "5/15minutes"
    assert settings.rate_limits_login_address == "100/15minutes"
    for name in ("RATE_LIMITS_LOGIN_EMAIL", "RATE_LIMITS_LOGIN_ADDRESS"):
        assert _error({"APP_ENV": "test", name: "five"}).variable == name


# --- one table (issue 13) -----------------------------------------------------------------


def test_duplicate_doorbells_is_a_setting_off_by_default() -> None:
    assert _load({"APP_ENV": "test"}).duplicate_doorbells is False
    assert _load({"APP_ENV": "test", "PURSER_DUPLICATE_DOORBELLS": "1"}).duplicate_doorbells is True
    assert _error({"APP_ENV": "test", "PURSER_DUPLICATE_DOORBELLS": "twice"}).variable == "PURSER_DUPLICATE_DOORBELLS"
    assert _error({**PRODUCTION, "PURSER_DUPLICATE_DOORBELLS": "0"}).variable == "PURSER_DUPLICATE_DOORBELLS"


def test_var_dir_comes_from_the_settings(tmp_path: Path) -> None:
    assert _load({"APP_ENV": "test"}).var_dir == tmp_path
    assert load_settings({**PRODUCTION}).var_dir == config_table.PROJECT_ROOT / "var"


def test_web_tier_settings(var_dir: Path) -> None:
    settings = _load({"APP_ENV": "test"})
    assert (settings.bind, settings.web_concurrency, settings.web_threads) == ("127.0.0.1:5000", 2, 8)
    assert (settings.web_worker_class, settings.web_worker_connections) == ("gevent", 1000)
    settings = _load({"APP_ENV": "test", "PORT": "5100", "WEB_WORKER_CLASS": "GTHREAD"})
    assert (settings.bind, settings.web_worker_class) == ("127.0.0.1:5100", "gthread")
    assert _load({"APP_ENV": "test", "WEB_BIND": "0.0.0.0:80"}).bind == "0.0.0.0:80"
    for name, raw in (("WEB_WORKER_CLASS", "eventlet"), ("WEB_CONCURRENCY", "0"), ("PORT", "http"),
                      ("JOB_WAIT_MAX_PER_USER", "1001")):
        assert _error({"APP_ENV": "test", name: raw}).variable == name


def test_max_amount_is_not_configuration() -> None:
    """The maximum amount is a money rule (ledger.money.MAX_AMOUNT, in the OpenAPI contract)."""
    assert "MAX_AMOUNT" not in {var.variable for var in config_table.VARIABLES}


def test_every_variable_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", readme))
    # Prefix rows (`RATE_LIMITS_FREE` / `_PREMIUM`) name their siblings by suffix.
    documented |= {f"RATE_LIMITS{suffix}" for suffix in re.findall(r"`(_[A-Z_]+)`", readme)}
    missing = [var.variable for var in config_table.VARIABLES if var.variable and var.variable not in documented]
    assert not missing, f"add these to README's configuration table: {missing}"


def test_production_writes_are_majority_and_journaled_and_development_keeps_the_default() -> None:
    """Issue 24, lever 5: acknowledged means durable. The options reach a real client unchanged."""
    from pymongo import MongoClient

    from infra.mongo import write_concern

    production = MongoClient("mongodb://127.0.0.1:1", connect=False, **write_concern(_load(PRODUCTION)))
    assert production.write_concern.document == {"w": "majority", "j": True}
    dev = write_concern(_load({"APP_ENV": "development"}))
    development = MongoClient("mongodb://127.0.0.1:1", connect=False, **dev)
    assert development.write_concern.document == {}
    production.close()
    development.close()
