"""Helpers of the observability suite: JSON log lines, Prometheus samples, a loopback Sentry.

Generic helpers (child environments, waiting, migrated databases) live in tests/support.
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_for


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` that is a JSON object (other lines are skipped, not hidden:
    :func:`non_json_lines` returns them)."""
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    return out


def non_json_lines(path: Path) -> list[str]:
    lines = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            json.loads(line)
        except ValueError:
            if line.strip():
                lines.append(line)
    return lines


def samples(text: str, name: str, **labels: str) -> float:
    """Sum of the Prometheus samples called ``name`` whose labels include ``labels``."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# --- a loopback Sentry ----------------------------------------------------------------


def _decode(body: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "").lower()
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":
        import brotli

        return brotli.decompress(body)
    return body


def parse_envelope(raw: bytes) -> tuple[dict[str, Any], list[tuple[dict[str, Any], bytes]]]:
    """Sentry envelope: a header line, then items (header line + payload)."""
    header_line, _, rest = raw.partition(b"\n")
    header = json.loads(header_line or b"{}")
    items = []
    while rest.strip():
        item_line, _, rest = rest.partition(b"\n")
        item_header = json.loads(item_line)
        length = item_header.get("length")
        if length is not None:
            payload, rest = rest[:length], rest[length:]
            rest = rest[1:] if rest.startswith(b"\n") else rest
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((item_header, payload))
    return header, items


class FakeSentry:
    """An HTTP server on 127.0.0.1 that stores what sentry-sdk sends to it."""

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                raw = _decode(body, self.headers.get("Content-Encoding"))
                record: dict[str, Any] = {"path": self.path, "headers": dict(self.headers), "raw": raw}
                try:
                    record["header"], record["items"] = parse_envelope(raw)
                except ValueError:
                    record["header"], record["items"] = {}, []
                with outer._lock:
                    outer.envelopes.append(record)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True, name="fake-sentry")

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.port}/1"

    def start(self) -> FakeSentry:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def events(self) -> list[tuple[dict[str, Any], bytes]]:
        """Every error event received so far: (event, the raw decompressed envelope)."""
        found = []
        with self._lock:
            envelopes = list(self.envelopes)
        for envelope in envelopes:
            for item_header, payload in envelope["items"]:
                if item_header.get("type") == "event":
                    found.append((json.loads(payload), envelope["raw"]))
        return found

    def wait_event(self, request_id: str, timeout: float = 15.0) -> tuple[dict[str, Any], bytes]:
        def probe() -> tuple[dict[str, Any], bytes] | None:
            for event, raw in self.events():
                if (event.get("tags") or {}).get("requestId") == request_id:
                    return event, raw
            return None

        return wait_for(probe, timeout, what=f"a Sentry event tagged requestId={request_id}")
