"""How one row of the configuration table reads its variable: parsers, production rules, computed defaults.

A parser turns a non-empty raw value into the field's value and raises ``ValueError``
with the problem; a production rule looks at the value (None when unset) and returns
the problem or None; :class:`Derived` computes a default from the fields read before
it. :mod:`infra.config_table` builds its rows from these; :mod:`infra.config` reads
them and names the variable in the :class:`~infra.config.ConfigError`.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_RATE_RE = re.compile(r"^\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day)s?$")


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


def _number(lo: float, hi: float, unit: str, shown: str = "") -> Parser:
    """A float of ``unit`` between ``lo`` and ``hi``; ``shown`` follows the bounds in the message."""
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number of {unit}, got {raw!r}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}{shown}, got {value:g}")
        return value
    return parse


def seconds(lo: float, hi: float) -> Parser:
    return _number(lo, hi, "seconds")


def milliseconds(lo: float, hi: float) -> Parser:
    return _number(lo, hi, "milliseconds", " ms")


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
