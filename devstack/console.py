"""The dev launcher's readable console: honcho's merged output, one short line per event.

Every Purser process writes JSON lines (``infra/logging_setup.py``); that stays the
format of production, of ``LOG_FILE`` and of any output that is not a person's
terminal. When ``make run`` writes to a terminal, the launcher reads honcho's output
and renders each line as::

    14:31:10.701 web          INFO  POST /api/premium/unlock 202  requestId=... jobId=... durationMs=8.1

Lines that are not JSON (Celery's banner, Flower's tornado log) keep their text
behind the same time and process columns. Nothing here changes what the processes
log, so the JSON tests and any log shipper see the same fields as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TextIO

# DEVSTACK_LOG_FORMAT: the launcher's own switch; the processes always write JSON.
FORMATS = ("console", "json")
PROCESS_WIDTH = 12  # "housekeeping"

_HONCHO = re.compile(r"^(?P<time>\d\d:\d\d:\d\d) (?P<name>\S+?)\s*\| ?(?P<text>.*)$")
_TORNADO = re.compile(r"^\[(?P<level>[DIWEC]) \d{6} \d\d:\d\d:\d\d (?P<where>[^\]]+)\] ?(?P<text>.*)$")
_LEVELS = {"DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN", "ERROR": "ERROR", "CRITICAL": "CRIT"}
_TORNADO_LEVELS = {"D": "DEBUG", "I": "INFO", "W": "WARN", "E": "ERROR", "C": "CRIT"}
# Shown right after the message, in this order, when the line carries them.
_FIRST = ("requestId", "jobId")
# Written on every line or repeated by the message itself: noise in a terminal.
_HIDDEN = {"timestamp", "level", "logger", "message", "service", "data", "taskName", "color_message",
           "exc_info", "stack_info"}
# The access log and Celery's trace repeat these in their message; other lines keep them.
_HIDDEN_IF_IN_MESSAGE = {"method", "path", "status", "task", "taskId"}
_MAX_VALUE = 80
# Beat's ticks (sweep every 5 s, webhooks, payouts...) would fill a terminal with Celery's
# bookkeeping: "Sending due task", "received", "succeeded". Those INFO lines of the beat and
# housekeeping processes are left out of the console (not of the JSON); warnings, errors and
# Purser's own lines about what a tick did stay.
_QUIET_PROCESSES = {"beat", "housekeeping"}

_RESET = "\033[0m"
_DIM = "\033[2m"
_LEVEL_COLOURS = {"DEBUG": _DIM, "WARN": "\033[33m", "ERROR": "\033[31m", "CRIT": "\033[1;31m"}
_PROCESS_COLOURS = ("\033[36m", "\033[32m", "\033[35m", "\033[34m", "\033[33m", "\033[96m", "\033[92m")


def choose_format(env: Mapping[str, str], stream: TextIO) -> str:
    """``DEVSTACK_LOG_FORMAT`` when set, else console for a development terminal, else JSON."""
    explicit = (env.get("DEVSTACK_LOG_FORMAT") or "").strip().lower()
    if explicit:
        if explicit not in FORMATS:
            raise ValueError(f"DEVSTACK_LOG_FORMAT must be one of {', '.join(FORMATS)}, got {explicit!r}")
        return explicit
    return "console" if env.get("APP_ENV") == "development" and _isatty(stream) else "json"


def use_colour(env: Mapping[str, str], stream: TextIO) -> bool:
    """Colour only on a terminal, and never under ``NO_COLOR`` (no-color.org)."""
    return _isatty(stream) and not env.get("NO_COLOR") and env.get("TERM") != "dumb"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _clock(timestamp: Any) -> str | None:
    """``HH:MM:SS.mmm`` in local time from the JSON line's UTC ISO timestamp."""
    if not isinstance(timestamp, str):
        return None
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone()
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _now() -> str:
    moment = datetime.now()
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"


def _fields(record: Mapping[str, Any], message: str) -> list[str]:
    out = [f"{key}={_short(record[key])}" for key in _FIRST if record.get(key) not in (None, "")]
    for key, value in record.items():
        if key in _FIRST or key in _HIDDEN or value in (None, "", [], {}):
            continue
        if key in _HIDDEN_IF_IN_MESSAGE and str(value) in message:
            continue
        out.append(f"{key}={_short(value)}")
    return out


class ConsoleRenderer:
    """Turns honcho's ``HH:MM:SS name | text`` lines into aligned, optionally coloured lines."""

    def __init__(self, colour: bool = False) -> None:
        self.colour = colour
        self._process_colours: dict[str, str] = {}

    def _paint(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.colour and code else text

    def _process(self, name: str) -> str:
        if name not in self._process_colours:
            self._process_colours[name] = _PROCESS_COLOURS[len(self._process_colours) % len(_PROCESS_COLOURS)]
        return self._paint(self._process_colours[name], name.ljust(PROCESS_WIDTH))

    def _line(self, clock: str, process: str, level: str, message: str, fields: list[str]) -> str:
        head = f"{self._paint(_DIM, clock)} {self._process(process)} "
        head += self._paint(_LEVEL_COLOURS.get(level, ""), level.ljust(5)) + " "
        tail = ("  " + self._paint(_DIM, " ".join(fields))) if fields else ""
        return head + message + tail

    def render(self, raw: str) -> str | None:
        """One rendered line (with indented traceback lines below it, if the event had one),
        or None for a line the console leaves out."""
        line = raw.rstrip("\r\n")
        match = _HONCHO.match(line)
        if match is None:
            return line
        name, text = match.group("name"), match.group("text")
        # honcho names processes web.1, worker.1...: one of each runs, the number says nothing.
        process = name.rsplit(".", 1)[0] if re.fullmatch(r".+\.\d+", name) else name
        if text.startswith("{"):
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if isinstance(record, dict) and "message" in record:
                if self._quiet(process, record):
                    return None
                return self._json_line(process, record)
        tornado = _TORNADO.match(text)
        if tornado is not None:
            level = _TORNADO_LEVELS[tornado.group("level")]
            return self._line(_now(), process, level, tornado.group("text"), [])
        return self._line(_now(), process, "", text, [])

    @staticmethod
    def _quiet(process: str, record: Mapping[str, Any]) -> bool:
        if process not in _QUIET_PROCESSES or record.get("level") != "INFO":
            return False
        logger = record.get("logger")
        return logger in ("celery.worker.strategy", "celery.app.trace") or (
            logger == "celery.beat" and str(record.get("message", "")).startswith("Scheduler: Sending due task"))

    def _json_line(self, process: str, record: dict[str, Any]) -> str:
        message = str(record.get("message", ""))
        level = _LEVELS.get(str(record.get("level", "")).upper(), str(record.get("level", ""))[:5])
        clock = _clock(record.get("timestamp")) or _now()
        first, *rest = message.splitlines() or [""]
        rendered = self._line(clock, process, level, first, _fields(record, message))
        extra = rest + [ln for key in ("exc_info", "stack_info") if record.get(key)
                        for ln in str(record[key]).splitlines()]
        if extra:
            indent = " " * (len(clock) + PROCESS_WIDTH + 9)
            rendered += "".join(f"\n{indent}{ln}" for ln in extra)
        return rendered
