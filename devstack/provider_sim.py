"""A payout provider simulator: a real HTTP process for development and the tests.

``python -m devstack.provider_sim --port N --purser-url http://127.0.0.1:5000``

It speaks the contract of ``services/payout_provider.py``:

* ``POST /payouts`` ``{"payoutId", "userId", "amount"}`` with ``Idempotency-Key``
  equal to the payout id: ``202`` the first time, ``200`` with the same record on a
  repeat (never a second payout), ``409`` for the same id with another amount;
* ``GET /payouts/<payoutId>``: ``{"payoutId", "status", "amount"}`` or ``404``.

``PROVIDER_SIM_DELAY_SECONDS`` (default 1) after accepting a payout it settles it,
``failed`` when the amount ends in 13 (anyone can trigger a failure by hand), else
``paid``, and calls Purser's ``POST /api/payments/events`` with ``payout.paid`` or
``payout.failed``, signed exactly as top-ups are (``X-Purser-Signature``, secret
``PROVIDER_WEBHOOK_SECRET``), retrying while Purser does not answer 2xx.

Faults for tests and for trying things by hand (``POST /_sim/control``, JSON):
``{"unavailable": true}`` answers every submission 503 (status lookups still work;
stop the process for a provider that is down altogether); ``{"dropAnswers": n}``
records the next ``n`` submissions but closes the connection without an answer
(a lost answer); ``{"webhooks": false}`` settles payouts without telling Purser
(only a status lookup finds out). ``POST /_sim/payouts/<id>/return`` reports a
paid payout as returned by the bank (``payout.returned``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
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

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger("purser.provider_sim")

_PAYOUT_PATH = re.compile(r"^/payouts/([A-Za-z0-9_.:-]{1,128})$")
_RETURN_PATH = re.compile(r"^/_sim/payouts/([A-Za-z0-9_.:-]{1,128})/return$")
WEBHOOK_ATTEMPTS = 20


class Simulator:
    def __init__(self, purser_url: str, secret: str, delay: float) -> None:
        self.purser_url = purser_url.rstrip("/")
        self.secret = secret
        self.delay = delay
        self.lock = threading.Lock()
        self.payouts: dict[str, dict[str, Any]] = {}
        self.control: dict[str, Any] = {"unavailable": False, "dropAnswers": 0, "webhooks": True}

    # -- payouts --------------------------------------------------------------
    def submit(self, payout_id: str, user_id: str, amount: int) -> tuple[int, dict[str, Any]]:
        with self.lock:
            existing = self.payouts.get(payout_id)
            if existing is not None:
                if existing["amount"] != amount or existing["userId"] != user_id:
                    return 409, {"error": "idempotency key reused with another payout"}
                return 200, dict(existing)
            record = {"payoutId": payout_id, "userId": user_id, "amount": amount, "status": "pending",
                      "acceptedAt": time.time()}
            self.payouts[payout_id] = record
        timer = threading.Timer(self.delay, self._settle, args=(payout_id,))
        timer.daemon = True
        timer.start()
        return 202, dict(record)

    def _settle(self, payout_id: str) -> None:
        with self.lock:
            record = self.payouts[payout_id]
            record["status"] = "failed" if record["amount"] % 100 == 13 else "paid"
            status, webhooks = record["status"], self.control["webhooks"]
        if webhooks:
            self.send_event(payout_id, status)

    def send_event(self, payout_id: str, status: str) -> None:
        from api.routes.payments import SIGNATURE_HEADER, sign

        raw = json.dumps({"id": f"evt_{payout_id}_{status}", "type": f"payout.{status}",
                          "data": {"payoutId": payout_id}}).encode()
        for attempt in range(WEBHOOK_ATTEMPTS):
            request = urllib.request.Request(
                f"{self.purser_url}/api/payments/events", data=raw, method="POST",
                headers={"Content-Type": "application/json",
                         SIGNATURE_HEADER: sign(self.secret, int(time.time()), raw)})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    log.info("event %s delivered: %s", f"payout.{status}", response.status)
                    return
            except urllib.error.HTTPError as exc:
                log.warning("event %s for %s answered %s", status, payout_id, exc.code)
                if 400 <= exc.code < 500 and exc.code not in (409, 429):
                    return
            except (urllib.error.URLError, OSError) as exc:
                log.warning("event %s for %s not delivered: %s", status, payout_id, exc)
            time.sleep(min(2 ** attempt * 0.25, 10))

    def mark_returned(self, payout_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            record = self.payouts.get(payout_id)
            if record is None or record["status"] != "paid":
                return 409, {"error": "only a paid payout can be returned"}
            record["status"] = "returned"
        threading.Thread(target=self.send_event, args=(payout_id, "returned"), daemon=True).start()
        return 200, dict(record)


def make_handler(sim: Simulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.info("%s %s", self.address_string(), fmt % args)

        def _send(self, status: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                return json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return None

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                return self._send(200, {"status": "ok"})
            match = _PAYOUT_PATH.match(self.path)
            if match is None:
                return self._send(404, {"error": "not found"})
            with sim.lock:
                record = sim.payouts.get(match.group(1))
            if record is None:
                return self._send(404, {"error": "unknown payout"})
            return self._send(200, {k: record[k] for k in ("payoutId", "status", "amount")})

        def do_POST(self) -> None:  # noqa: N802
            body = self._body()
            if self.path == "/_sim/control":
                if not isinstance(body, dict):
                    return self._send(400, {"error": "expected a JSON object"})
                with sim.lock:
                    for name in ("unavailable", "dropAnswers", "webhooks"):
                        if name in body:
                            sim.control[name] = body[name]
                    return self._send(200, dict(sim.control))
            match = _RETURN_PATH.match(self.path)
            if match is not None:
                return self._send(*sim.mark_returned(match.group(1)))
            if self.path != "/payouts":
                return self._send(404, {"error": "not found"})
            if sim.control["unavailable"]:
                return self._send(503, {"error": "unavailable"})
            if not isinstance(body, dict):
                return self._send(400, {"error": "expected a JSON object"})
            payout_id, user_id, amount = body.get("payoutId"), body.get("userId"), body.get("amount")
            if (not isinstance(payout_id, str) or not isinstance(user_id, str) or type(amount) is not int
                    or amount <= 0 or self.headers.get("Idempotency-Key") != payout_id):
                return self._send(422, {"error": "payoutId, userId, amount and Idempotency-Key=payoutId"})
            status, record = sim.submit(payout_id, user_id, amount)
            with sim.lock:
                drop = sim.control["dropAnswers"] > 0
                if drop:
                    sim.control["dropAnswers"] -= 1
            if drop:  # recorded, but the answer is lost on the way back
                self.close_connection = True
                return None
            return self._send(status, record)

    return Handler


def serve(port: int, purser_url: str, secret: str, delay: float, host: str = "127.0.0.1") -> None:
    sim = Simulator(purser_url, secret, delay)
    server = ThreadingHTTPServer((host, port), make_handler(sim))
    server.daemon_threads = True
    print(f"provider simulator listening on http://{host}:{server.server_address[1]} "
          f"(webhooks to {purser_url}, delay {delay:g}s)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


class ProviderSimProcess(ManagedProcess):
    """The simulator as a managed child of ``make run`` and of the test fixtures."""

    ready_timeout = 20.0
    stop_timeout = 5.0

    def __init__(self, env: Mapping[str, str], log_path: Path | None, purser_url: str,
                 port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        super().__init__([sys.executable, "-m", "devstack.provider_sim", "--port", str(self.port),
                          "--purser-url", purser_url], log_path=log_path, env=env, cwd=ROOT,
                         name=f"provider-sim :{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def probe(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--purser-url", required=True, help="base URL of Purser's API (webhooks go there)")
    args = parser.parse_args(argv)
    from infra.config import settings_or_exit

    settings = settings_or_exit()  # the webhook secret and the delay, as Purser reads them
    if settings.is_production:
        raise SystemExit("purser: the provider simulator does not run in production")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s provider-sim %(levelname)s %(message)s")
    serve(args.port, args.purser_url, settings.provider_webhook_secret, settings.provider_sim_delay_seconds,
          args.host)


if __name__ == "__main__":
    main()
