"""One request followed across processes: gunicorn (2 workers) -> Redis -> Celery (the
Procfile's ledger worker, prefork 2, and its housekeeping worker).

The stack of this module runs with a loopback Sentry as its DSN, its own Redis
database and MongoDB database, per-process log files and free metrics ports for
both workers. Everything asserted here is read from the real output of those processes:
their stdout, their ``/metrics`` and the envelopes that reached the fake Sentry.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.stores import free_port, stop_all
from tests.observability.helpers import FakeSentry, json_lines, non_json_lines, samples
from tests.support.client import ApiClient
from tests.support.env import TEST_WEBHOOK_SECRET, child_env, migrated_db, redis_db
from tests.support.stack import Web, Workers
from tests.support.waiting import wait_for

DB_NAME = "purser_obs_stack"
RELEASE = "obs-test-1"

# Secrets sent on purpose; none may appear in any log line or Sentry envelope.
JWT_LIKE = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJvYnMtdGVzdCJ9.c2lnbmF0dXJlLXNob3VsZC1uZXZlci1sZWFr"
PASSWORD = "hunter2-never-logged"
CARD = "4111 1111 1111 1111"
SIGNATURE = "t=1700000000,v1=" + "ab" * 32


@dataclass
class Stack:
    web: Web
    workers: Workers
    sentry: FakeSentry
    api: ApiClient
    metrics_port: int  # the ledger worker's
    housekeeping_metrics_port: int
    redis_url: str
    log_dir: Path
    example_path: Path

    def web_lines(self) -> list[dict[str, Any]]:
        assert self.web.log_path is not None
        return json_lines(self.web.log_path)

    def worker_lines(self) -> list[dict[str, Any]]:
        """Both workers' JSON lines (beat's tasks and ``debug.boom`` run on housekeeping)."""
        return [line for w in self.workers.processes if w.log_path is not None for line in json_lines(w.log_path)]


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str], fake_sentry: FakeSentry,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("obs-stack")
    log_dir = base / "files"
    metrics_port, housekeeping_metrics_port = free_port(), free_port()
    redis_url = redis_db(stack_env["REDIS_URL"], 3)
    migrated_db(stack_env["MONGODB_URI"], DB_NAME)
    env = child_env(stack_env, REDIS_URL=redis_url, MONGODB_DB=DB_NAME, SENTRY_DSN=fake_sentry.dsn,
                    PURSER_RELEASE=RELEASE, WORKER_METRICS_PORT=str(metrics_port),
                    HOUSEKEEPING_METRICS_PORT=str(housekeeping_metrics_port), WORKER_CONCURRENCY="2",
                    LOG_FILE=str(log_dir / "{process}-{pid}.log"))
    web = Web(env, base / "gunicorn.log", concurrency=2)
    workers = Workers.create(env, base)
    started: list[Any] = []
    try:
        started.append(web.start())
        started.extend(workers.processes)
        workers.start()
        for port in (metrics_port, housekeeping_metrics_port):
            wait_for(lambda port=port: _scrape_raw(port) is not None, timeout=10, what=f"metrics port {port}")
        api = ApiClient(base_url=web.base_url)
        yield Stack(web, workers, fake_sentry, api, metrics_port, housekeeping_metrics_port, redis_url,
                    log_dir, Path(env["PURSER_VAR_DIR"]) / "observability-example.jsonl")
        api.close()  # idle keep-alive connections would hold gunicorn's graceful stop
    finally:
        stop_all(started)


def _scrape_raw(port_or_url: int | str) -> str | None:
    url = port_or_url if isinstance(port_or_url, str) else f"http://127.0.0.1:{port_or_url}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def _fund(stack: Stack, user: dict[str, Any], amount: int) -> None:
    r = stack.api.topup(TEST_WEBHOOK_SECRET, user["userId"], amount)
    assert r.status == 202, r
    assert stack.api.wait_job(user["token"], r.json["jobId"])["status"] == "settled"


def _transfer(stack: Stack, user: dict[str, Any], receiver: str, amount: int,
              request_id: str | None = None) -> Any:
    headers = {"X-Request-ID": request_id} if request_id else None
    return stack.api.request("POST", "/api/wallet/transfer", json_body={"receiverId": receiver, "amount": amount},
                             token=user["token"], key=f"obs-{uuid.uuid4().hex}", headers=headers)


def _all_text(stack: Stack) -> str:
    parts = []
    worker_logs = [w.log_path for w in stack.workers.processes]
    for path in (stack.web.log_path, *worker_logs, *sorted(stack.log_dir.glob("*.log"))):
        if path is not None and path.exists():
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(parts)


# --- request ids and log lines --------------------------------------------------------


def test_request_id_follows_the_job_from_access_line_to_settle_lines(stack: Stack) -> None:
    alice, bob = stack.api.register(), stack.api.register()
    _fund(stack, alice, 1_000)
    request_id = f"obs-trace-{uuid.uuid4().hex[:12]}"

    r = _transfer(stack, alice, bob["userId"], 250, request_id)
    assert r.status == 202, r
    assert r.headers["X-Request-ID"] == request_id
    job_id = r.json["jobId"]
    assert stack.api.wait_job(alice["token"], job_id)["status"] == "settled"

    access = wait_for(lambda: [line for line in stack.web_lines()
                               if line.get("logger") == "purser.access" and line.get("requestId") == request_id],
                      what="the access line")
    assert len(access) == 1
    line = access[0]
    assert line["method"] == "POST" and line["path"] == "/api/wallet/transfer" and line["status"] == 202
    assert line["userId"] == alice["userId"] and line["jobId"] == job_id
    assert isinstance(line["durationMs"], int | float) and line["durationMs"] >= 0
    assert line["level"] == "INFO" and line["timestamp"].endswith("Z")

    settled = wait_for(lambda: [w for w in stack.worker_lines()
                                if w.get("jobId") == job_id and w.get("message") == "job settled"],
                       what="the worker's 'job settled' line")
    for w in settled:
        assert w["requestId"] == request_id
        assert w["userId"] == alice["userId"]
        assert isinstance(w["partition"], int)
        assert w["taskId"] and w["logger"] == "purser.settle" and w["jobType"] == "transfer"

    assert line["service"] == "web" and settled[0]["service"] == "worker"

    # Kept for docs/observability.md: the real lines of one request, web then worker.
    task_id = settled[0]["taskId"]

    def task_lines() -> list[dict[str, Any]] | None:
        lines = [w for w in stack.worker_lines() if w.get("taskId") == task_id or task_id in w.get("message", "")]
        return lines if any("succeeded" in w["message"] for w in lines) else None

    example = access + wait_for(task_lines, what="the task's 'succeeded' line")
    with stack.example_path.open("w") as fh:
        for record in example:
            fh.write(json.dumps(record) + "\n")


def test_malformed_request_id_is_replaced_and_every_answer_has_one(stack: Stack) -> None:
    r = stack.api.request("GET", "/api/health", headers={"X-Request-ID": "bad id!"})
    assert r.status == 200
    replaced = r.headers["X-Request-ID"]
    assert replaced != "bad id!" and uuid.UUID(replaced).version == 4
    r = stack.api.request("GET", "/api/no-such-route")
    assert r.status == 404 and r.json["requestId"] == r.headers["X-Request-ID"]


def test_failed_job_lines_carry_the_error_code(stack: Stack) -> None:
    alice, bob = stack.api.register(), stack.api.register()
    request_id = f"obs-fail-{uuid.uuid4().hex[:12]}"
    r = _transfer(stack, alice, bob["userId"], 10, request_id)  # alice has no coins
    assert r.status == 202, r
    job = stack.api.wait_job(alice["token"], r.json["jobId"])
    assert job["status"] == "failed" and job["error"]["code"] == "INSUFFICIENT_FUNDS"
    line = wait_for(lambda: next((w for w in stack.worker_lines()
                                  if w.get("jobId") == job["jobId"] and w.get("message") == "job failed"), None),
                    what="the 'job failed' line")
    assert line["code"] == "INSUFFICIENT_FUNDS" and line["requestId"] == request_id and line["taskId"]


def test_log_file_gets_the_same_json_lines_per_process(stack: Stack) -> None:
    stack.api.request("GET", "/api/health", headers={"X-Request-ID": "obs-logfile-0001"})

    def in_files() -> list[dict[str, Any]]:
        return [line for path in stack.log_dir.glob("web-*.log") for line in json_lines(path)
                if line.get("requestId") == "obs-logfile-0001"]

    found = wait_for(in_files, what="the access line in a LOG_FILE")
    assert found[0]["logger"] == "purser.access"
    assert {p.name.split("-")[0] for p in stack.log_dir.glob("*.log")} >= {"web", "worker"}


def test_web_output_is_one_json_object_per_line(stack: Stack) -> None:
    assert stack.web.log_path is not None
    # Only the launcher's own "--- <time> starting: ..." marker is not JSON (gunicorn's
    # boot lines go through the same formatter as the app's).
    assert [line for line in non_json_lines(stack.web.log_path) if not line.startswith("--- ")] == []
    assert any(line.get("logger") == "gunicorn.error" for line in stack.web_lines())


# --- metrics ------------------------------------------------------------------------------


def test_web_metrics_are_merged_across_gunicorn_workers(stack: Stack) -> None:
    url = stack.web.base_url + "/metrics"
    before = _scrape_raw(url)
    assert before is not None
    for _ in range(20):  # a new connection each: both workers answer some
        assert requests.get(stack.web.base_url + "/api/health", timeout=5).status_code == 200
    after = _scrape_raw(url)
    assert after is not None
    label = {"route": "/api/health", "method": "GET", "status": "200"}
    assert samples(after, "purser_http_requests_total", **label) - samples(
        before, "purser_http_requests_total", **label) == 20
    assert samples(after, "purser_http_request_duration_seconds_count", route="/api/health") >= 20
    assert "/metrics" not in stack.api.request("GET", "/api/openapi.json").json["paths"]


def test_jobs_accepted_settled_failed_latency_batch_queue_and_drift(stack: Stack) -> None:
    alice, bob = stack.api.register(), stack.api.register()
    _fund(stack, alice, 500)
    web_before = _scrape_raw(stack.web.base_url + "/metrics") or ""
    worker_before = _scrape_raw(stack.metrics_port) or ""

    ok = _transfer(stack, alice, bob["userId"], 100)
    ko = _transfer(stack, bob, alice["userId"], 10_000)
    for r, token in ((ok, alice["token"]), (ko, bob["token"])):
        assert r.status == 202, r
        assert stack.api.wait_job(token, r.json["jobId"])["status"] in ("settled", "failed")

    web_after = _scrape_raw(stack.web.base_url + "/metrics") or ""
    assert samples(web_after, "purser_jobs_accepted_total", type="transfer") - samples(
        web_before, "purser_jobs_accepted_total", type="transfer") == 2

    def worker_delta() -> dict[str, float] | None:
        text = _scrape_raw(stack.metrics_port) or ""
        delta = {
            "settled": samples(text, "purser_jobs_settled_total", type="transfer")
            - samples(worker_before, "purser_jobs_settled_total", type="transfer"),
            "failed": samples(text, "purser_jobs_failed_total", type="transfer", code="INSUFFICIENT_FUNDS")
            - samples(worker_before, "purser_jobs_failed_total", type="transfer", code="INSUFFICIENT_FUNDS"),
            "latency": samples(text, "purser_settle_latency_seconds_count", type="transfer")
            - samples(worker_before, "purser_settle_latency_seconds_count", type="transfer"),
            "batches": samples(text, "purser_settle_batch_size_count")
            - samples(worker_before, "purser_settle_batch_size_count"),
        }
        return delta if delta["settled"] >= 1 and delta["failed"] >= 1 else None

    delta = wait_for(worker_delta, what="settled and failed counters on the worker port")
    assert delta == {"settled": 1, "failed": 1, "latency": 2, "batches": delta["batches"]}
    assert 1 <= delta["batches"] <= 2

    # The beat tasks, sent by hand: the sweeper observes the queue, reconcile the drift.
    from celery import Celery

    client = Celery("obs-test-client", broker=stack.redis_url)
    try:
        client.send_task("ledger.sweep", queue="purser.default")
        client.send_task("ledger.reconcile", queue="purser.default")

        def gauges() -> str | None:
            text = _scrape_raw(stack.housekeeping_metrics_port) or ""
            has_queue = all(f'purser_jobs_queued{{partition="{p}"}}' in text for p in range(4))
            return text if has_queue and "purser_reconcile_drift " in text else None

        text = wait_for(gauges, what="queue and drift gauges")
    finally:
        client.close()
    assert samples(text, "purser_reconcile_drift") == 0
    assert samples(text, "purser_jobs_queued") == 0
    assert samples(text, "purser_jobs_queued_oldest_age_seconds") == 0


# --- Sentry ---------------------------------------------------------------------------------


def _assert_no_secret(raw: str | bytes, where: str, *extra: str) -> None:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    for secret in (JWT_LIKE, PASSWORD, CARD, CARD.replace(" ", ""), SIGNATURE.split("v1=")[1], *extra):
        i = text.find(secret)
        assert i < 0, f"{secret!r} leaked into {where}: ...{text[max(0, i - 300):i + 100]}..."


def test_web_error_reaches_sentry_with_request_id_and_without_secrets(stack: Stack) -> None:
    user = stack.api.register()  # a real bearer token: the Authorization header must not leak
    request_id = f"obs-sentry-web-{uuid.uuid4().hex[:8]}"
    body = {"email": "leak@example.com", "password": PASSWORD, "card": CARD, "note": f"token={JWT_LIKE}"}
    r = stack.api.request("POST", "/api/test/error", json_body=body, token=user["token"],
                          headers={"X-Request-ID": request_id, "X-Purser-Signature": SIGNATURE,
                                   "Idempotency-Key": "obs-keep-me-1"})
    assert r.status == 500
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert r.json["code"] == "INTERNAL_ERROR" and r.json["requestId"] == request_id
    event, raw = stack.sentry.wait_event(request_id)
    assert event["environment"] == "test" and event["release"] == RELEASE
    assert event["tags"]["process"] == "web" and event["user"]["id"] == user["userId"]
    assert event["request"]["url"].endswith("/api/test/error")
    assert event["request"]["headers"]["Idempotency-Key"] == "obs-keep-me-1"  # kept
    assert event["request"]["data"]["password"] == "[REDACTED]"
    assert "DeliberateError" in raw.decode()
    _assert_no_secret(raw, "the web Sentry envelope", user["token"])

    # And the same request in the web process's own output.
    line = wait_for(lambda: next((w for w in stack.web_lines()
                                  if w.get("requestId") == request_id and w.get("level") == "ERROR"), None),
                    what="the error line")
    assert "exc_info" in line and "DeliberateError" in line["exc_info"]
    _assert_no_secret(_all_text(stack), "the process logs", user["token"])


def test_task_error_reaches_sentry_with_request_id_and_without_secrets(stack: Stack) -> None:
    from celery import Celery

    request_id = f"obs-sentry-task-{uuid.uuid4().hex[:8]}"
    client = Celery("obs-test-client", broker=stack.redis_url)
    try:
        client.send_task("debug.boom", args=[f"failing with Bearer {JWT_LIKE} card {CARD} password={PASSWORD}"],
                         kwargs={"detail": {"password": PASSWORD, "authorization": f"Bearer {JWT_LIKE}",
                                            "signature": SIGNATURE}},
                         queue="purser.default", headers={"requestId": request_id})
    finally:
        client.close()
    event, raw = stack.sentry.wait_event(request_id)
    assert event["environment"] == "test" and event["release"] == RELEASE
    assert event["tags"]["process"] == "worker" and event["tags"].get("taskId")
    assert event["exception"]["values"][-1]["type"] == "DeliberateTaskError"
    assert "[REDACTED]" in event["exception"]["values"][-1]["value"]
    crumbs = [c.get("message") for c in (event.get("breadcrumbs") or {}).get("values", [])]
    assert "debug.boom about to fail" in crumbs
    _assert_no_secret(raw, "the worker Sentry envelope")
    wait_for(lambda: any(w.get("requestId") == request_id for w in stack.worker_lines()),
             what="the task's log lines")
    _assert_no_secret(_all_text(stack), "the process logs")
