"""The dev console renderer, the signing helper and the supervisor's line sink, without a stack."""

from __future__ import annotations

import io
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api.routes.payments import sign
from devstack.console import ConsoleRenderer, choose_format, use_colour
from devstack.sign import NoSecret, signature, webhook_secret
from devstack.supervisor import ManagedProcess

STAMP = "2026-12-01T14:35:01.160Z"


def _local(stamp: str) -> str:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _honcho(name: str, record: dict | str) -> str:
    text = record if isinstance(record, str) else json.dumps(record)
    return f"14:35:01 {name:<14} | {text}\n"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_json_event_is_one_aligned_line_with_request_and_job_ids_first() -> None:
    access = {"message": "POST /api/premium/unlock 202", "method": "POST", "path": "/api/premium/unlock",
              "status": 202, "durationMs": 8.1, "userId": "u1", "jobId": "j1", "requestId": "r1",
              "service": "web", "timestamp": STAMP, "level": "INFO", "logger": "purser.access"}
    line = ConsoleRenderer().render(_honcho("web.1", access))
    assert line == (f"{_local(STAMP)} web          INFO  POST /api/premium/unlock 202  "
                    "requestId=r1 jobId=j1 durationMs=8.1 userId=u1")


def test_levels_are_short_and_a_traceback_is_indented_under_its_line() -> None:
    record = {"message": "job failed with an unexpected error", "level": "ERROR", "timestamp": STAMP,
              "logger": "purser.settle", "requestId": None, "jobId": "j9",
              "exc_info": "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom"}
    first, *rest = ConsoleRenderer().render(_honcho("worker.1", record)).splitlines()
    assert first.split()[1:4] == ["worker", "ERROR", "job"]
    assert first.endswith("jobId=j9") and "requestId" not in first
    assert [r.strip() for r in rest] == ["Traceback (most recent call last):", 'File "x.py", line 1',
                                         "ValueError: boom"]
    assert all(r.startswith(" " * 20) for r in rest)
    warn = ConsoleRenderer().render(_honcho("web.1", {**record, "level": "WARNING", "exc_info": None}))
    assert warn.split()[2] == "WARN"


def test_text_lines_keep_their_text_and_flower_lines_their_level() -> None:
    renderer = ConsoleRenderer()
    banner = renderer.render(_honcho("worker.1", " -------------- worker@vm v5.7.0 (collider)"))
    assert banner.split(maxsplit=2)[1:] == ["worker", "-------------- worker@vm v5.7.0 (collider)"]
    flower = renderer.render(_honcho("flower.1", "[W 261201 14:31:12 inspector:44] Inspect method stats failed"))
    assert flower.split(maxsplit=3)[1:] == ["flower", "WARN", "Inspect method stats failed"]
    system = renderer.render(_honcho("system", "web.1 started (pid=10705)"))
    assert system.split(maxsplit=2)[1:] == ["system", "web.1 started (pid=10705)"]
    assert renderer.render("a line honcho did not prefix\n") == "a line honcho did not prefix"


def test_beat_ticks_celery_bookkeeping_is_left_out_but_not_their_warnings_or_the_ledger_worker() -> None:
    renderer = ConsoleRenderer()
    due = {"message": "Scheduler: Sending due task sweep (ledger.sweep)", "level": "INFO",
           "logger": "celery.beat", "timestamp": STAMP}
    received = {"message": "Task ledger.sweep[1] received", "level": "INFO",
                "logger": "celery.worker.strategy", "timestamp": STAMP}
    assert renderer.render(_honcho("beat.1", due)) is None
    assert renderer.render(_honcho("housekeeping.1", received)) is None
    assert renderer.render(_honcho("worker.1", received)) is not None  # settlement stays visible
    assert renderer.render(_honcho("housekeeping.1", {**received, "level": "WARNING"})) is not None
    own = {"message": "sweeper re-rang partitions", "level": "INFO", "logger": "purser.maintenance",
           "partitions": [1, 2], "timestamp": STAMP}
    assert renderer.render(_honcho("housekeeping.1", own)).endswith("partitions=[1, 2]")


def test_colour_only_on_a_terminal_and_never_under_no_color() -> None:
    record = {"message": "m", "level": "ERROR", "timestamp": STAMP, "logger": "x"}
    assert "\033[" not in ConsoleRenderer(colour=False).render(_honcho("web.1", record))
    assert "\033[31m" in ConsoleRenderer(colour=True).render(_honcho("web.1", record))
    assert use_colour({}, _Tty()) and not use_colour({}, io.StringIO())
    assert not use_colour({"NO_COLOR": "1"}, _Tty())


def test_the_console_is_for_a_development_terminal_unless_told() -> None:
    assert choose_format({"APP_ENV": "development"}, _Tty()) == "console"
    assert choose_format({"APP_ENV": "development"}, io.StringIO()) == "json"
    assert choose_format({"APP_ENV": "production"}, _Tty()) == "json"
    assert choose_format({"APP_ENV": "test", "DEVSTACK_LOG_FORMAT": "console"}, io.StringIO()) == "console"
    assert choose_format({"APP_ENV": "development", "DEVSTACK_LOG_FORMAT": "JSON"}, _Tty()) == "json"
    with pytest.raises(ValueError, match="DEVSTACK_LOG_FORMAT"):
        choose_format({"DEVSTACK_LOG_FORMAT": "pretty"}, _Tty())


def test_sign_helper_signs_as_the_api_verifies_with_the_stack_secret(tmp_path: Path) -> None:
    body = '{"providerTxId":"t1","userId":"6b0edb14b1ee51b26d1aa76e","amount":1000}'
    env = {"PURSER_VAR_DIR": str(tmp_path)}
    with pytest.raises(NoSecret, match="start the stack first"):
        webhook_secret(env)  # never generates one the stack would not know
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "provider_webhook_secret").write_text("s3cret-of-the-stack\n")
    now = int(time.time())
    assert signature(body, env, timestamp=now) == sign("s3cret-of-the-stack", now, body.encode())
    assert signature(body, {**env, "PROVIDER_WEBHOOK_SECRET": "explicit"}, now) == sign("explicit", now,
                                                                                        body.encode())


def test_a_line_sink_gets_every_line_of_stdout_and_stderr_before_stop_returns() -> None:
    lines: list[str] = []
    script = "import sys\nfor i in range(200): print(f'out {i}')\nprint('err', file=sys.stderr)"
    proc = ManagedProcess([sys.executable, "-c", script], log_path=None, line_sink=lines.append, name="printer")
    proc.start()
    deadline = time.monotonic() + 10
    while proc.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.stop()
    assert [ln.rstrip("\n") for ln in lines] == [f"out {i}" for i in range(200)] + ["err"]
    with pytest.raises(ValueError):
        ManagedProcess(["true"], log_path=Path("x.log"), line_sink=lines.append)


def test_every_format_of_timestamp_the_processes_write_is_read_as_utc() -> None:
    moment = datetime(2026, 12, 1, 23, 59, 59, 999000, tzinfo=UTC)
    stamp = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    line = ConsoleRenderer().render(_honcho("web.1", {"message": "m", "level": "INFO", "timestamp": stamp}))
    assert line.startswith(_local(stamp) + " ")
