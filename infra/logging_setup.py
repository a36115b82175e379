"""One logging setup for web, worker and beat: JSON lines with context and masking."""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from infra import context

_SECRET_KEYS = re.compile(
    r"(pass(word)?|secret|token|authorization|signature|api[_-]?key|cookie|dsn|jwt|card)", re.I)
_KEEP_KEYS = {"idempotency-key", "idempotency_key", "idempotencykey", "tokentype"}
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SIG = re.compile(r"(?i)(v1=)[0-9a-f]{16,}")
_DIGITS = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_KV_SECRET = re.compile(
    r"(?i)\b(password|passwd|secret|token|access_token|accessToken|api_key)(\"?\s*[:=]\s*\"?)([^\s\"',}&]+)")
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


def mask_text(text: str) -> str:
    text = _JWT.sub(MASK, text)
    text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    text = _SIG.sub(lambda m: m.group(1) + MASK, text)
    text = _KV_SECRET.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    return _mask_cards(text)


def is_secret_key(key: str) -> bool:
    return key.lower() not in _KEEP_KEYS and bool(_SECRET_KEYS.search(key))


def mask_value(value: Any, depth: int = 0) -> Any:
    """Mask secrets in any JSON-like value: secret-named keys and secret-shaped text."""
    if depth > 8:
        return value
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and is_secret_key(k) and v not in (None, "")
                    else mask_value(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_value(v, depth + 1) for v in value)
    return value


class ContextFilter(logging.Filter):
    """Copy the request/task context onto the record (without overriding extras)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in context.current().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not hasattr(record, "requestId"):
            record.requestId = None
        return True


class MaskingFilter(logging.Filter):
    """Remove secrets from the message, its args and every extra field."""

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
    def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        super().add_fields(log_record, record, message_dict)
        log_record["timestamp"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        log_record["level"] = record.levelname
        log_record["logger"] = record.name
        log_record.setdefault("requestId", getattr(record, "requestId", None))
        log_record.pop("color_message", None)


_configured = False


def setup_logging(level: str = "INFO", log_file: str | None = None, process: str | None = None,
                  force: bool = False) -> None:
    """Install JSON logging on the root logger (idempotent per process)."""
    global _configured
    if _configured and not force:
        return
    formatter = PurserJsonFormatter("%(message)s", json_ensure_ascii=False)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file:
        handlers.append(logging.handlers.RotatingFileHandler(log_file, maxBytes=50 * 2**20, backupCount=5))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(ContextFilter())
        handler.addFilter(MaskingFilter())
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("pymongo", "urllib3", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if process:
        context.bind(process=process)
    _configured = True
