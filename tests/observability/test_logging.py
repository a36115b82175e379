"""JSON logging and masking, read from the real output of a separate Python process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.env import ROOT

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI2NjVmMDAwMDAwMDAwMDAwMDAwMDAwMDEifQ.ZmFrZS1zaWduYXR1cmU"
CARD = "4111 1111 1111 1111"  # passes Luhn
NOT_A_CARD = "4111111111111112"  # 16 digits, fails Luhn: an order number, kept
SIG_HEX = "9f" * 32
IDEMPOTENCY_KEY = "idem-3f1c2a7b-keep-me"
REQUEST_ID = "req-12345678-1234-4123-8123-123456789012"  # digit groups must not be taken for a card

SCRIPT = f"""
import logging, sys
from infra import context
from infra.logging_setup import setup_logging

setup_logging(sys.argv[1], sys.argv[2] or None, process="probe", max_bytes=int(sys.argv[3]), backups=2)
log = logging.getLogger("purser.probe")
with context.bound(requestId={REQUEST_ID!r}, jobId="665f1a2b5555555555554444", userId="665f00000000000000000001"):
    log.info("incoming %s", "Authorization: Bearer {JWT}")
    log.info("token issued: {JWT}")
    log.info("login body", extra={{"body": {{"email": "ann@example.com", "password": "hunter2-secret",
                                          "nested": {{"apiKey": "k-123-secret"}}}}}})
    log.info("headers", extra={{"headers": {{"Authorization": "Bearer opaque-secret-token",
                                           "Idempotency-Key": {IDEMPOTENCY_KEY!r},
                                           "X-Purser-Signature": "t=1700000000,v1={SIG_HEX}"}}}})
    log.info("card %s order %s", {CARD!r}, {NOT_A_CARD!r})
    log.info("raw json %s", '{{"password": "two words", "accessToken": "tok-secret"}}')
    log.debug("debug line")
    try:
        raise ValueError("bad token {JWT} for card {CARD}")
    except ValueError:
        log.exception("it failed")
log.info("outside any request")
for i in range(int(sys.argv[4])):
    log.info("filler line %d", i, extra={{"padding": "x" * 200}})
"""


def run_probe(level: str = "INFO", log_file: Path | None = None, max_bytes: int = 50 * 2**20,
              filler: int = 0) -> tuple[list[dict[str, Any]], str]:
    result = subprocess.run([sys.executable, "-c", SCRIPT, level, str(log_file or ""), str(max_bytes), str(filler)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()], result.stdout


def test_every_line_is_one_json_object_with_the_standard_fields() -> None:
    lines, _ = run_probe()
    assert len(lines) == 8
    for line in lines:
        assert {"timestamp", "level", "logger", "message", "requestId"} <= set(line)
        assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]
        assert line["logger"] == "purser.probe"
    inside, outside = lines[0], lines[-1]
    assert inside["requestId"] == REQUEST_ID and inside["jobId"] == "665f1a2b5555555555554444"
    assert inside["userId"] == "665f00000000000000000001" and inside["service"] == "probe"
    assert outside["requestId"] is None and "jobId" not in outside


def test_secrets_are_masked_in_real_output() -> None:
    lines, raw = run_probe()
    for secret in (JWT, "hunter2-secret", "k-123-secret", "opaque-secret-token", SIG_HEX, CARD,
                   CARD.replace(" ", ""), "two words", "tok-secret"):
        assert secret not in raw, f"{secret!r} leaked"
    by_message = {line["message"].split(" ")[0]: line for line in lines}
    assert by_message["incoming"]["message"] == "incoming Authorization: Bearer [REDACTED]"
    assert by_message["token"]["message"] == "token issued: [REDACTED]"
    assert by_message["login"]["body"] == {"email": "ann@example.com", "password": "[REDACTED]",
                                           "nested": {"apiKey": "[REDACTED]"}}
    headers = by_message["headers"]["headers"]
    assert headers["Authorization"] == "[REDACTED]" and headers["X-Purser-Signature"] == "[REDACTED]"
    assert headers["Idempotency-Key"] == IDEMPOTENCY_KEY
    assert by_message["card"]["message"] == f"card [REDACTED] order {NOT_A_CARD}"
    error = by_message["it"]
    assert error["level"] == "ERROR" and "ValueError: bad token [REDACTED] for card [REDACTED]" in error["exc_info"]


def test_log_level_is_respected() -> None:
    assert not any(line["message"] == "debug line" for line in run_probe("INFO")[0])
    assert any(line["message"] == "debug line" for line in run_probe("DEBUG")[0])
    assert {line["level"] for line in run_probe("ERROR")[0]} == {"ERROR"}


def test_log_file_rotates_and_keeps_json_lines(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "{process}.log"
    stdout_lines, _ = run_probe(log_file=log_file, max_bytes=4096, filler=200)
    files = sorted((tmp_path / "logs").iterdir())
    assert [f.name for f in files] == ["probe.log", "probe.log.1", "probe.log.2"]  # backups=2
    in_files = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    assert all(f.stat().st_size <= 4096 for f in files)
    assert in_files and all(line in stdout_lines for line in in_files)
    assert stdout_lines[-1] in in_files  # the newest line is in the current file
