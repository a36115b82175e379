"""Waiting for a job (``Prefer: wait=N``) through real processes: no thread held, no polling.

A gunicorn of this module (ONE gevent process, ``JOB_WAIT_MAX_PER_USER=4``) and
the session's Celery worker over the session's SecantusDB and Redis. Jobs are
held back by storing them without their doorbell (as a paused ledger worker
would leave them) and released by ringing their partition: the settler then
announces them and the waiting requests are answered.

The in-process test counts MongoDB commands with a pymongo ``CommandListener``
on the app's own client; the gunicorn tests read the web's ``/metrics``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import requests
from pymongo import monitoring

from devstack.apps import WebServer
from devstack.stores import stop_all
from tests.api.helpers import mint_token
from tests.support.env import ROOT, child_env

CAP = 4


@pytest.fixture(scope="module")
def wait_web(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebServer]:
    env = child_env(stack_env, {"WEB_WORKER_CLASS": "gevent", "JOB_WAIT_MAX_PER_USER": str(CAP),
                                 "LOG_LEVEL": "WARNING"})
    server = WebServer(env, tmp_path_factory.mktemp("wait-web") / "gunicorn.log", concurrency=1, cwd=ROOT)
    try:
        server.start()
        yield server
    finally:
        stop_all([server])


# --- helpers ---------------------------------------------------------------------------------


def make_users(db: Any, count: int) -> list[tuple[str, str]]:
    """``count`` users with wallets, inserted directly (no argon2): (user id, token)."""
    from bson import ObjectId

    from ledger.timeutil import utcnow

    now, made = utcnow(), []
    for _ in range(count):
        uid = str(ObjectId())
        db.users.insert_one({"_id": uid, "email": f"w{uuid.uuid4().hex[:12]}@example.com", "passwordHash": "x",
                             "role": "free", "displayName": None, "accountStatus": "active", "createdAt": now})
        db.wallets.insert_one({"_id": uid, "userId": uid, "balance": 0, "status": "active", "version": 0,
                               "createdAt": now, "lastTransactionAt": None})
        made.append((uid, mint_token(uid, "free")))
    return made


def hold_job(db: Any, user_id: str) -> dict[str, Any]:
    """A queued top-up job for ``user_id`` whose doorbell is NOT rung: it waits for :func:`release`."""
    from infra.config import get_settings
    from ledger.operations import TopUp
    from services.jobs import build_job

    ptx = f"ptx-{uuid.uuid4().hex}"
    job = build_job(TopUp(user_id, 5, ptx), user_id, get_settings().ledger_partitions, None, f"provider:{ptx}")
    db.jobs.insert_one(job)
    return job


def release(*jobs: dict[str, Any]) -> None:
    from tasks.settle import ring

    for partition in sorted({j["partition"] for j in jobs}):
        ring(partition, None, force=True)


def get_job(web: WebServer, token: str, job_id: str, wait: int | None = 10) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if wait is not None:
        headers["Prefer"] = f"wait={wait}"
    return requests.get(f"{web.base_url}/api/jobs/{job_id}", headers=headers, timeout=30)


def metric(web: WebServer, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{web.base_url}/metrics", timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def eventually(probe: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def active_waits(web: WebServer) -> float:
    return metric(web, "purser_job_waits_active")


# --- through gunicorn ------------------------------------------------------------------------


def test_waiter_is_answered_when_its_job_settles(wait_web: WebServer, fresh_db: Any, session_worker: Any) -> None:
    ((uid, token),) = make_users(fresh_db, 1)
    job = hold_job(fresh_db, uid)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(get_job, wait_web, token, job["_id"])
        eventually(lambda: active_waits(wait_web) >= 1, what="the wait to start")
        time.sleep(0.5)
        assert not future.done(), "answered before its job settled"
        rung = time.monotonic()
        release(job)
        r = future.result(timeout=20)
        answered_after = time.monotonic() - rung
    assert r.status_code == 200, r.text
    assert r.headers["Preference-Applied"] == "wait=10"
    body = r.json()
    assert body["jobId"] == job["_id"] and body["status"] == "settled" and body["settledAt"]
    # Woken by the settler's announcement, not by its 10 s deadline.
    assert answered_after < 5, answered_after
    assert metric(wait_web, "purser_job_waits_total", outcome="terminal") >= 1


def test_other_requests_are_answered_while_fifty_clients_wait(wait_web: WebServer, fresh_db: Any,
                                                             session_worker: Any) -> None:
    waiters = 50
    people = make_users(fresh_db, -(-waiters // CAP) + 1)
    (reader_id, reader_token), owners = people[0], people[1:]
    jobs = [(owners[i // CAP], hold_job(fresh_db, owners[i // CAP][0])) for i in range(waiters)]
    reads_before = metric(wait_web, "purser_job_wait_store_reads_total")
    base_active = active_waits(wait_web)
    with ThreadPoolExecutor(waiters) as pool:
        futures: list[Future[requests.Response]] = [
            pool.submit(get_job, wait_web, token, job["_id"]) for (_, token), job in jobs]
        eventually(lambda: active_waits(wait_web) >= base_active + waiters, what="50 waits to start")
        # One gunicorn process (the threaded worker had 8 threads): with 50 requests
        # waiting, other requests are still served, and none of the waiters is.
        auth = {"Authorization": f"Bearer {reader_token}"}
        for _ in range(20):
            r = requests.get(f"{wait_web.base_url}/api/wallet/balance", headers=auth, timeout=10)
            assert r.status_code == 200 and r.json()["userId"] == reader_id, r.text
        assert requests.get(f"{wait_web.base_url}/api/jobs", headers=auth, timeout=10).status_code == 200
        assert requests.get(f"{wait_web.base_url}/api/health", timeout=10).status_code == 200
        assert not any(f.done() for f in futures), "a waiter was answered before its job settled"
        # Nothing read MongoDB for the waiters while they waited (no polling).
        assert metric(wait_web, "purser_job_wait_store_reads_total") == reads_before

        release(*(job for _, job in jobs))
        answers = [f.result(timeout=30) for f in futures]
    for r, (_, job) in zip(answers, jobs, strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["jobId"] == job["_id"] and r.json()["status"] == "settled", r.json()
        assert r.headers["Preference-Applied"] == "wait=10"
    # After the announcements, one read per announcement (per 50 jobs), not one per waiter.
    assert metric(wait_web, "purser_job_wait_store_reads_total") - reads_before < waiters / 2


def test_waits_are_capped_per_user(wait_web: WebServer, fresh_db: Any, session_worker: Any) -> None:
    (a_id, a_token), (b_id, b_token) = make_users(fresh_db, 2)
    held = [hold_job(fresh_db, a_id) for _ in range(CAP + 1)]
    other = hold_job(fresh_db, b_id)
    capped_before = metric(wait_web, "purser_job_waits_total", outcome="capped")
    base_active = active_waits(wait_web)
    with ThreadPoolExecutor(CAP + 1) as pool:
        futures = [pool.submit(get_job, wait_web, a_token, job["_id"]) for job in held[:CAP]]
        eventually(lambda: active_waits(wait_web) >= base_active + CAP, what=f"{CAP} waits of one user")

        # Over the cap: answered at once with the job as it is, the preference not applied.
        started = time.monotonic()
        extra = get_job(wait_web, a_token, held[CAP]["_id"])
        assert time.monotonic() - started < 5
        assert extra.status_code == 200, extra.text
        assert extra.json()["status"] == "queued" and extra.json()["jobId"] == held[CAP]["_id"]
        assert "Preference-Applied" not in extra.headers
        assert metric(wait_web, "purser_job_waits_total", outcome="capped") == capped_before + 1

        # The cap is per user: another user still waits.
        b_future = pool.submit(get_job, wait_web, b_token, other["_id"])
        eventually(lambda: active_waits(wait_web) >= base_active + CAP + 1, what="the other user's wait")
        assert not any(f.done() for f in futures)

        release(*held, other)
        for f in [*futures, b_future]:
            r = f.result(timeout=30)
            assert r.status_code == 200 and r.json()["status"] == "settled"
            assert r.headers["Preference-Applied"] == "wait=10"
    # The slots are given back when the waits end.
    again = [hold_job(fresh_db, a_id) for _ in range(CAP)]
    with ThreadPoolExecutor(CAP) as pool:
        futures = [pool.submit(get_job, wait_web, a_token, job["_id"]) for job in again]
        eventually(lambda: active_waits(wait_web) >= base_active + CAP, what="waits after the slots were freed")
        release(*again)
        assert all(f.result(timeout=30).headers.get("Preference-Applied") == "wait=10" for f in futures)


def test_a_wait_that_times_out_reads_once_at_its_deadline(wait_web: WebServer, fresh_db: Any) -> None:
    ((uid, token),) = make_users(fresh_db, 1)
    job = hold_job(fresh_db, uid)  # never released
    reads_before = metric(wait_web, "purser_job_wait_store_reads_total")
    started = time.monotonic()
    r = get_job(wait_web, token, job["_id"], wait=2)
    assert 1.5 <= time.monotonic() - started < 6
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert r.headers["Preference-Applied"] == "wait=2"
    assert metric(wait_web, "purser_job_wait_store_reads_total") == reads_before + 1
    assert metric(wait_web, "purser_job_waits_total", outcome="timeout") >= 1
    # Other people's and unknown jobs stay 404 with a wait too.
    ((_, other_token),) = make_users(fresh_db, 1)
    assert get_job(wait_web, other_token, job["_id"]).status_code == 404
    assert get_job(wait_web, token, "0123456789abcdef01234567").status_code == 404


def test_waits_count_in_rate_limits(stack_env: dict[str, str], fresh_db: Any,
                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    env = child_env(stack_env, {"RATE_LIMIT_ENABLED": "true", "RATE_LIMITS_FREE": "3/minute",
                                 "LOG_LEVEL": "WARNING"})
    server = WebServer(env, tmp_path_factory.mktemp("wait-limits") / "gunicorn.log", concurrency=1, cwd=ROOT)
    try:
        server.start()
        ((uid, token),) = make_users(fresh_db, 1)
        job = hold_job(fresh_db, uid)
        answers = [get_job(server, token, job["_id"], wait=1) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429], [a.text for a in answers]
        assert [a.headers.get("X-RateLimit-Remaining") for a in answers[:3]] == ["2", "1", "0"]
        assert answers[3].json()["code"] == "RATE_LIMITED" and answers[3].headers["Retry-After"]
    finally:
        stop_all([server])


# --- in process: every MongoDB command counted ---------------------------------------------


class JobReads(monitoring.CommandListener):
    """Counts ``find`` commands on ``jobs`` whose filter names a given job id."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == "jobs":
            self.commands.append(dict(event.command.get("filter") or {}))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def reads_of(self, job_id: str) -> int:
        def names(value: Any) -> bool:
            if value == job_id:
                return True
            if isinstance(value, dict):
                return any(names(v) for v in value.values())
            if isinstance(value, list):
                return any(names(v) for v in value)
            return False

        return sum(1 for f in list(self.commands) if names(f.get("_id")))


@pytest.fixture
def counted_app(fresh_db: Any, session_worker: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """The app in this process, its MongoDB client built with a :class:`JobReads` listener."""
    import infra.mongo
    from api import create_app, waits
    from infra.config import get_settings

    listener = JobReads()
    original = infra.mongo.MongoClient
    monkeypatch.setattr(infra.mongo, "MongoClient",
                        lambda *a, **kw: original(*a, event_listeners=[listener], **kw))
    infra.mongo.reset_client()
    app = create_app(get_settings())
    hub = waits.get_hub(get_settings()).start()
    assert hub.subscribed.wait(10), "the announcement hub did not subscribe"
    try:
        yield app, listener
    finally:
        infra.mongo.close_client()
        monkeypatch.undo()
        infra.mongo.reset_client()


def test_mongodb_is_not_polled_while_waiting(counted_app: tuple[Any, Any], fresh_db: Any) -> None:
    app, listener = counted_app
    ((uid, token),) = make_users(fresh_db, 1)
    job = hold_job(fresh_db, uid)

    def wait_in_app(seconds: int) -> Any:
        with app.test_client() as client:
            return client.get(f"/api/jobs/{job['_id']}",
                              headers={"Authorization": f"Bearer {token}", "Prefer": f"wait={seconds}"})

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(wait_in_app, 10)
        eventually(lambda: listener.reads_of(job["_id"]) >= 1, what="the first read")
        time.sleep(2.0)  # the old implementation read the job every 100 ms
        assert not future.done()
        assert listener.reads_of(job["_id"]) == 1
        release(job)
        r = future.result(timeout=20)
    assert r.status_code == 200 and r.get_json()["status"] == "settled"
    # The first read and one read after the announcement: two in all.
    assert listener.reads_of(job["_id"]) == 2

    # A wait that times out: one read at the start, one at the deadline.
    late = hold_job(fresh_db, uid)
    with app.test_client() as client:
        r = client.get(f"/api/jobs/{late['_id']}", headers={"Authorization": f"Bearer {token}", "Prefer": "wait=2"})
    assert r.get_json()["status"] == "queued" and r.headers["Preference-Applied"] == "wait=2"
    assert listener.reads_of(late["_id"]) == 2


# --- the announcement never gets in settlement's way -----------------------------------------


def test_an_announcement_that_cannot_be_published_is_dropped_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from devstack.stores import free_port
    from infra import announce, config

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    config.reset_settings()
    announce.reset()
    try:
        ok = SimpleNamespace(ok=True)
        batch = SimpleNamespace(outcomes=[({"_id": "a" * 24}, ok), ({"_id": "b" * 24}, SimpleNamespace(ok=False))])
        assert announce.terminal_jobs(batch) == [("a" * 24, "settled"), ("b" * 24, "failed")]
        started = time.monotonic()
        assert announce.announce_batch(batch) is False  # never raises
        assert announce.announce_batch(batch) is False  # paused: not even tried
        assert announce.announce_batch(SimpleNamespace()) is False  # not a batch: still no exception
        assert time.monotonic() - started < 2
    finally:
        monkeypatch.undo()
        config.reset_settings()
        announce.reset()


def test_announcement_messages_round_trip() -> None:
    from infra import announce

    raw = announce.encode([("a" * 24, "settled"), ("b" * 24, "failed")], published_at=12.5)
    decoded = announce.decode(raw)
    assert decoded is not None and decoded.published_at == 12.5
    assert decoded.jobs == (("a" * 24, "settled"), ("b" * 24, "failed"))
    assert len(raw) < 100
    for junk in (b"", b"{}", b"[1]", b'{"v": 1, "t": 1, "j": [["x", "?"]]}', b"\xff"):
        assert announce.decode(junk) is None
