"""A webhook receiver for the tests: a real HTTP server process, scripted over HTTP.

``python -m tests.support.receiver --port N`` serves any ``POST`` path as a webhook
endpoint: it records the request (path, headers, body, time, the status it answered)
and answers according to its script. Nothing is verified here: the tests check the
recorded requests with an independent verifier.

Control (JSON, ``POST /_control``): ``{"path": "/a", "fail": n, "status": 503,
"retryAfter": "1", "sleep": s, "sleepCount": n, "gone": true}``: for requests to
``path`` (``"*"``: all), answer the next ``n`` with ``status`` (and ``Retry-After``),
sleep ``s`` seconds before answering the next ``sleepCount`` ones, answer ``410``
for good with ``gone``. ``GET /_received`` lists what was received; ``/health``.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from devstack.ports import free_port
from devstack.supervisor import ManagedProcess

ROOT = Path(__file__).resolve().parents[2]


class Script:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: dict[str, dict[str, Any]] = {}
        self.received: list[dict[str, Any]] = []

    def rule(self, path: str) -> dict[str, Any]:
        return self.rules.setdefault(path, {"fail": 0, "status": 500, "retryAfter": None, "sleep": 0.0,
                                            "sleepCount": 0, "gone": False})

    def answer(self, path: str) -> tuple[int, dict[str, str], float]:
        """(status, headers, seconds to sleep first) for the next request to ``path``."""
        with self.lock:
            rule = self.rules.get(path) or self.rules.get("*") or self.rule(path)
            sleep = 0.0
            if rule["sleepCount"] > 0:
                rule["sleepCount"] -= 1
                sleep = rule["sleep"]
            if rule["gone"]:
                return 410, {}, sleep
            if rule["fail"] > 0:
                rule["fail"] -= 1
                headers = {"Retry-After": str(rule["retryAfter"])} if rule["retryAfter"] is not None else {}
                return rule["status"], headers, sleep
            return 204, {}, sleep


def make_handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stderr.write("receiver: " + fmt % args + "\n")

        def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            if body:
                self.send_header("Content-Type", "application/json")
            self.end_headers()
            if body:
                self.wfile.write(body)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(200, b"{}")
            elif self.path == "/_received":
                with script.lock:
                    self._send(200, json.dumps(script.received).encode())
            else:
                self._send(404)

        def do_POST(self) -> None:  # noqa: N802
            body = self._body()
            if self.path == "/_control":
                spec = json.loads(body)
                with script.lock:
                    rule = script.rule(spec.pop("path", "*"))
                    rule.update(spec)
                self._send(200, b"{}")
                return
            status, headers, sleep = script.answer(self.path)
            record = {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                      "body": base64.b64encode(body).decode(), "receivedAt": time.time(), "status": status}
            with script.lock:  # recorded on arrival: a test may kill the sender while we sleep
                script.received.append(record)
            if sleep:
                time.sleep(sleep)
            try:
                self._send(status, headers=headers)
            except OSError:
                pass  # the sender gave up (timeout) or was killed: recorded anyway

    return Handler


class Receiver(ManagedProcess):
    """The receiver as a test fixture's child process; ``url(path)`` is an endpoint."""

    ready_timeout = 20.0
    stop_timeout = 5.0

    def __init__(self, log_path: Path | None, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        super().__init__([sys.executable, "-m", "tests.support.receiver", "--port", str(self.port)],
                         log_path=log_path, cwd=ROOT, name=f"webhook receiver :{self.port}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def probe(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def script(self, path: str = "*", **rule: Any) -> None:
        request = urllib.request.Request(f"{self.base_url}/_control", method="POST",
                                         data=json.dumps({"path": path, **rule}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def received(self, path: str | None = None) -> list[dict[str, Any]]:
        """Requests received (``path`` only, when given), oldest first, bodies decoded to bytes."""
        with urllib.request.urlopen(f"{self.base_url}/_received", timeout=5) as response:
            records = json.loads(response.read())
        return [{**r, "body": base64.b64decode(r["body"])} for r in records if path is None or r["path"] == path]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(Script()))
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
