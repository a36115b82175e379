"""One logging setup for web, worker and beat: JSON lines with context and masking.

Masking happens in :class:`PurserJsonFormatter`, on the dictionary about to be
written, not on the :class:`logging.LogRecord`: the record is shared with every
other consumer (Sentry's logging integration reads it *after* our handlers ran),
and mutating it would strip their stack traces. Sentry gets the same rules through
:func:`mask_value` in its ``before_send`` (``infra.observability``).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from infra import context

_SECRET_KEYS = re.compile(
    r"(pass(word)?|secret|token|authorization|signature|api[_-]?key|cookie|dsn|jwt|card)", re.I)
_KEEP_KEYS = {"idempotency-key", "idempotency_key", "idempotencykey", "tokentype"}
# Identifiers whose values pass through untouched: a UUID or an ObjectId can hold a
# digit run that passes Luhn, and a correlation id must never be half-masked.
_ID_KEYS = {"requestid", "x-request-id", "jobid", "taskid", "userid", "ownerid", "walletid", "partition",
            "idempotency-key", "idempotency_key", "idempotencykey"}
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SIG = re.compile(r"(?i)(v1=)[0-9a-f]{16,}")
# 13-19 digits, optionally grouped by single spaces or dashes, not glued to other
# letters or digits (so hex ids such as ObjectIds are not taken for card numbers).
_DIGITS = re.compile(r"(?<![0-9A-Za-z])(?:\d[ -]?){12,18}\d(?![0-9A-Za-z])")
_KV_SECRET = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|token|access_token|refresh_token|accessToken|api_key|apikey)"
    r"([\"']?\s*[:=]\s*)(\"[^\"]*\"|'[^']*'|[^\s\"',}&]+)")
MASK = "[REDACTED]"

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if alt:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        alt = not alt
    return total % 10 == 0


def _mask_cards(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return MASK if 13 <= len(digits) <= 19 and _luhn(digits) else m.group(0)
    return _DIGITS.sub(repl, text)


def _requote(original: str, replacement: str) -> str:
    quote = original[0] if original[:1] in ("'", '"') else ""
    return f"{quote}{replacement}{quote}"


def mask_text(text: str) -> str:
    """Mask secret-shaped text: JWTs, bearer tokens, webhook signatures, ``password=...``, cards."""
    text = _JWT.sub(MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _SIG.sub(lambda m: m.group(1) + MASK, text)
    text = _KV_SECRET.sub(lambda m: m.group(1) + m.group(2) + _requote(m.group(3), MASK), text)
    return _mask_cards(text)


def is_secret_key(key: str) -> bool:
    return key.lower() not in _KEEP_KEYS and bool(_SECRET_KEYS.search(key))


def _mask_item(key: Any, value: Any, depth: int, max_depth: int) -> Any:
    if isinstance(key, str):
        lowered = key.lower()
        if lowered in _ID_KEYS and isinstance(value, str | int):
            return value
        if is_secret_key(key) and value not in (None, ""):
            return MASK
    return mask_value(value, depth + 1, max_depth)


def mask_value(value: Any, depth: int = 0, max_depth: int = 8) -> Any:
    """Mask secrets in any JSON-like value: secret-named keys and secret-shaped text.

    Returns a new value; the input is not modified. Containers nested deeper than
    ``max_depth`` are replaced by a marker rather than passed through unmasked.
    """
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict | list | tuple) and depth > max_depth:
        return "[TRUNCATED]"
    if isinstance(value, dict):
        return {k: _mask_item(k, v, depth, max_depth) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_value(v, depth + 1, max_depth) for v in value)
    if isinstance(value, bytes | bytearray):
        return mask_text(bytes(value).decode("utf-8", "replace"))
    return value


_STATIC_FIELDS: dict[str, Any] = {}


class ContextFilter(logging.Filter):
    """Copy the process fields and the request/task context onto the record (without overriding extras)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in {**_STATIC_FIELDS, **context.current()}.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "requestId"):
            record.requestId = None
        return True


class MaskingFilter(logging.Filter):
    """Remove secrets from the message, its args and every extra field, *in place*.

    Not installed by :func:`setup_logging` (its formatter masks without touching the
    shared record); kept for handlers that format records some other way.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the line
            message = str(record.msg)
        record.msg = mask_text(message)
        record.args = None
        for key in list(record.__dict__):
            if key in _STD_ATTRS:
                continue
            value = record.__dict__[key]
            if is_secret_key(key) and value not in (None, ""):
                record.__dict__[key] = MASK
            else:
                record.__dict__[key] = mask_value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text)
            record.exc_info = None
        return True


class PurserJsonFormatter(JsonFormatter):
    """One JSON object per line: ``timestamp`` (UTC), ``level``, ``logger``, ``message``,
    ``requestId``, the context fields and the extras, masked."""

    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        log_record["level"] = record.levelname
        log_record["logger"] = record.name
        log_record.setdefault("requestId", getattr(record, "requestId", None))
        log_record.pop("color_message", None)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # Every field, whatever its origin (message, args, extras, nested dicts,
        # the formatted traceback), goes through the same rules just before output.
        return mask_value(log_data, max_depth=12)


_configured = False


def log_file_path(template: str, process: str | None = None) -> str:
    """``LOG_FILE`` with ``{pid}`` and ``{process}`` filled in.

    A rotating file must have one writer: gunicorn and Celery run several processes,
    so either give each its own file (``var/log/{process}-{pid}.log``) or leave
    rotation to an external tool.
    """
    return template.replace("{pid}", str(os.getpid())).replace("{process}", process or "app")


def setup_logging(level: str = "INFO", log_file: str | None = None, process: str | None = None,
                  force: bool = False, *, max_bytes: int = 50 * 2**20, backups: int = 5) -> None:
    """Install JSON logging on the root logger (idempotent per process).

    Stdout always (twelve-factor); ``log_file`` adds a size-rotated file.
    """
    global _configured
    if _configured and not force:
        return
    formatter = PurserJsonFormatter("%(message)s", json_ensure_ascii=False)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file:
        path = Path(log_file_path(log_file, process))
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                                             encoding="utf-8"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if isinstance(handler, logging.FileHandler):
            handler.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(ContextFilter())
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("pymongo", "urllib3", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if process:
        # Process-wide, not a context variable: gunicorn's request threads start with
        # an empty context. "service", not "process": that is a LogRecord attribute.
        _STATIC_FIELDS["service"] = process
    _configured = True
