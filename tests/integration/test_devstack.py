"""devstack on real processes: store durability across restarts, no orphans, the launcher."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pymongo
import pytest
import redis

from devstack.stores import MongoServer, ProcessStartError, RedisServer, free_port, live_processes
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.1)
    return _gone(pid)


def _listening(port: int) -> bool:
    return any(
        c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in psutil.net_connections(kind="tcp")
    )


@pytest.fixture
def mongo(tmp_path: Path) -> Iterator[MongoServer]:
    server = MongoServer(tmp_path / "mongo")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        yield server.start()
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# SecantusDB


def test_free_port_hands_out_distinct_unused_ports() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    assert not any(_listening(p) for p in ports)


def test_mongo_stop_start_keeps_data(mongo: MongoServer) -> None:
    uri = mongo.uri
    assert "retryWrites=false" in uri and "directConnection=true" in uri
    with pymongo.MongoClient(uri) as client:
        coll = client.purser_devstack.wallets
        coll.create_index("owner", unique=True)
        coll.insert_many([{"owner": f"u{i}", "balance": i * 100} for i in range(500)])
        # A committed multi-document transaction must survive too.
        with client.start_session() as session, session.start_transaction():
            coll.update_one({"owner": "u1"}, {"$inc": {"balance": -50}}, session=session)
            coll.update_one({"owner": "u2"}, {"$inc": {"balance": 50}}, session=session)

    first_pid = mongo.pid
    started = time.monotonic()
    mongo.stop()
    stop_seconds = time.monotonic() - started
    assert not mongo.alive
    assert first_pid is not None and _wait_gone(first_pid)
    assert not _listening(mongo.port)
    assert stop_seconds < mongo.stop_timeout, "SecantusDB needed SIGKILL: WiredTiger did not close cleanly"

    mongo.start()
    assert mongo.uri == uri, "restart must keep the port"
    with pymongo.MongoClient(mongo.uri) as client:
        coll = client.purser_devstack.wallets
        assert coll.count_documents({}) == 500
        assert coll.find_one({"owner": "u1"})["balance"] == 50
        assert coll.find_one({"owner": "u2"})["balance"] == 250
        assert sum(d["balance"] for d in coll.find({}, {"balance": 1})) == sum(i * 100 for i in range(500))
        assert any(ix.get("unique") and "owner" in ix["key"] for ix in coll.list_indexes())
        plan = coll.find({"owner": "u7"}).explain()
        assert "IXSCAN" in str(plan)


def test_mongo_restart_reopens_same_storage(mongo: MongoServer) -> None:
    with pymongo.MongoClient(mongo.uri) as client:
        client.purser_devstack.c.insert_one({"_id": "kept"})
    old_pid = mongo.pid
    mongo.restart()
    assert mongo.pid != old_pid
    with pymongo.MongoClient(mongo.uri) as client:
        assert client.purser_devstack.c.find_one({"_id": "kept"}) == {"_id": "kept"}


def test_mongo_kill_leaves_no_process(mongo: MongoServer) -> None:
    pid = mongo.pid
    assert pid is not None
    mongo.kill()
    assert not mongo.alive
    assert _wait_gone(pid, timeout=5)
    assert not _listening(mongo.port)
    storage = str(mongo.storage_path)
    survivors = [p for p in psutil.process_iter(["cmdline"]) if storage in " ".join(p.info["cmdline"] or [])]
    assert survivors == []
    assert mongo not in live_processes()
    # And it comes back on the same data after a crash.
    mongo.start()
    with pymongo.MongoClient(mongo.uri) as client:
        client.admin.command("ping")


def test_mongo_refuses_a_busy_port(mongo: MongoServer, tmp_path: Path) -> None:
    clash = MongoServer(tmp_path / "second", port=mongo.port)
    with pytest.raises(ProcessStartError, match=f"port {mongo.port}"):
        clash.start()
    assert not clash.alive


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    bad = MongoServer(tmp_path / "mongo")
    # A regular file where the WiredTiger home directory should be.
    bad.storage_path.parent.mkdir(parents=True, exist_ok=True)
    bad.before_start = lambda: None  # type: ignore[method-assign]
    bad.storage_path.write_text("not a directory")
    with pytest.raises(ProcessStartError) as info:
        bad.start(timeout=20)
    message = str(info.value)
    assert "exited with code" in message
    assert bad.log_path is not None and str(bad.log_path) in message
    assert len(message.splitlines()) > 2, "the log tail is missing"
    assert not bad.alive
    assert bad not in live_processes()


def test_mongo_refuses_storage_held_by_a_live_earlier_run(mongo: MongoServer) -> None:
    second = MongoServer(mongo.storage_path)
    with pytest.raises(ProcessStartError, match=f"pid {mongo.pid}"):
        second.start()


# ---------------------------------------------------------------------------
# Redis


def test_redis_restart_keeps_data_and_empty_restart_loses_it(redis_srv: RedisServer) -> None:
    client = redis.Redis.from_url(redis_srv.url)
    client.set("k", "v")
    client.rpush("ledger.0", "msg-1", "msg-2")
    client.close()

    redis_srv.restart()
    client = redis.Redis.from_url(redis_srv.url)
    assert client.get("k") == b"v"
    assert client.llen("ledger.0") == 2
    client.close()

    redis_srv.restart(empty=True)
    assert redis_srv.url.endswith(f":{redis_srv.port}/0")
    client = redis.Redis.from_url(redis_srv.url)
    assert client.get("k") is None
    assert client.llen("ledger.0") == 0
    assert client.dbsize() == 0
    client.close()


def test_redis_kill_leaves_no_process(redis_srv: RedisServer) -> None:
    pid = redis_srv.pid
    assert pid is not None
    redis_srv.kill()
    assert not redis_srv.alive
    assert _wait_gone(pid, timeout=5)
    assert not _listening(redis_srv.port)


# ---------------------------------------------------------------------------
# orphan protection

_CHILD = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from devstack.stores import RedisServer
    server = RedisServer(Path(sys.argv[1])).start()
    print(server.pid, flush=True)
    if sys.argv[2] == "exit":
        sys.exit(0)
    time.sleep(120)
    """
)


@pytest.mark.parametrize("how", ["exit", "sigterm", "sigkill"])
def test_stores_do_not_outlive_their_parent(tmp_path: Path, how: str) -> None:
    """Normal exit runs the atexit hook; SIGTERM likewise once installed; SIGKILL relies on PDEATHSIG."""
    script = _CHILD
    if how == "sigterm":
        script = script.replace(
            "from devstack.stores import RedisServer",
            "from devstack.stores import RedisServer, install_signal_cleanup\ninstall_signal_cleanup()",
        )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "redis"), how],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        redis_pid = int(parent.stdout.readline())
        assert not _gone(redis_pid)
        if how == "sigterm":
            parent.send_signal(signal.SIGTERM)
        elif how == "sigkill":
            parent.kill()
        parent.wait(timeout=30)
        assert _wait_gone(redis_pid, timeout=15), f"redis {redis_pid} outlived its parent ({how})"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# ---------------------------------------------------------------------------
# the launcher, end to end


def _launcher_env(var_dir: Path, port: int, flower_port: int) -> dict[str, str]:
    dropped = {
        "APP_ENV",
        "MONGODB_URI",
        "MONGODB_DB",
        "REDIS_URL",
        "FLOWER_BASIC_AUTH",
        "JWT_SECRET",
        "PROVIDER_WEBHOOK_SECRET",
        "RATE_LIMIT_ENABLED",
        "LEDGER_PARTITIONS",
        "WEB_BIND",
    }
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(
        PURSER_VAR_DIR=str(var_dir),
        PORT=str(port),
        FLOWER_PORT=str(flower_port),
        WEB_CONCURRENCY="1",
        WORKER_CONCURRENCY="1",
    )
    return env


def _hold(port: int) -> socket.socket:
    """A socket keeping ``port`` busy until closed (unless someone else already holds the port)."""
    sock = socket.socket()
    with contextlib.suppress(OSError):
        sock.bind(("127.0.0.1", port))
        sock.listen()
    return sock


@pytest.mark.parametrize("variable", ["FLOWER_PORT", "WORKER_METRICS_PORT", "PROVIDER_SIM_PORT"])
def test_the_launcher_refuses_a_busy_port_it_was_told_to_use_naming_the_variable(tmp_path: Path,
                                                                                   variable: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        busy = sock.getsockname()[1]
        env = {**_launcher_env(tmp_path / "var", free_port(), free_port()), variable: str(busy)}
        done = subprocess.run([sys.executable, "-m", "devstack", "run"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done
    assert f"devstack: {variable}={busy}: the port is already in use" in done.stderr, done.stderr
    assert "starting" not in done.stderr + done.stdout, "nothing may start before the refusal"


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


class _Launch:
    def __init__(self, var_dir: Path, run: int, unset: tuple[str, ...] = ()) -> None:
        self.var_dir = var_dir
        self.port = free_port()
        self.flower_port = free_port()
        self.log_path = var_dir.parent / f"launcher-{run}.log"
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in _launcher_env(var_dir, self.port, self.flower_port).items() if k not in unset}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devstack", "run"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90.0) -> None:
        url = f"http://127.0.0.1:{self.port}/api/health/ready"
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"launcher exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
            status = _http_status(url)
            if status == 200:
                return
            time.sleep(0.5)
        pytest.fail(f"{url} answered {status} after {timeout:.0f} s:\n{self.output()[-4000:]}")

    def store_ports(self) -> list[int]:
        return [int(p) for p in re.findall(r"starting \S+ on port (\d+)", self.output())]

    def mongo_uri(self) -> str:
        match = re.search(r"MongoDB\s+(mongodb://\S+)", self.output())
        assert match, self.output()[-4000:]
        return match.group(1)

    def interrupt(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def force_cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        for proc in _stack_processes(self.var_dir, []):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def _stack_processes(var_dir: Path, ports: list[int]) -> list[psutil.Process]:
    """Live processes that belong to a launcher run: by var dir (cmdline or env) or by port."""
    marker = str(var_dir)
    port_re = re.compile(r"(?<!\d)(" + "|".join(map(str, ports)) + r")(?!\d)") if ports else None
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        try:
            env_var_dir = proc.environ().get("PURSER_VAR_DIR")
        except psutil.Error:
            env_var_dir = None
        if marker in cmdline or env_var_dir == marker or (port_re and port_re.search(cmdline)):
            found.append(proc)
    return found


def _money_round_trip(launch: _Launch, var_dir: Path) -> None:
    """Every Procfile worker role is up: a top-up settles, housekeeping and webhook workers beat."""
    from tests.support.client import ApiClient

    api = ApiClient(f"http://127.0.0.1:{launch.port}")
    user = api.register()
    secret = (var_dir / "secrets" / "provider_webhook_secret").read_text().strip()
    accepted = api.topup(secret, user["userId"], 500)
    assert accepted.status == 202, accepted
    job = api.wait_job(user["token"], accepted.json["jobId"], timeout=60)
    assert job["status"] == "settled", job
    assert api.balance(user["token"]) == 500
    match = re.search(r"Redis\s+(redis://\S+)", launch.output())
    assert match, launch.output()[-4000:]
    client = redis.Redis.from_url(match.group(1))
    roles = {role: sorted(m.decode().split("@")[0] for m in client.zrange(f"purser:heartbeats:{role}", 0, -1))
             for role in ("ledger", "other")}
    assert roles == {"ledger": ["worker"], "other": ["housekeeping", "webhooks"]}, roles


@pytest.mark.slow
def test_launcher_runs_stack_and_stops_cleanly(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    secret_file = var_dir / "secrets" / "flower_basic_auth"

    # The ledger worker's metrics port left to its default, 9808, held busy here: the
    # launcher must move it to a free port and say so (issue 27, item 5), not run without it.
    held = _hold(9808)
    first = _Launch(var_dir, 1, unset=("WORKER_METRICS_PORT",))
    try:
        # Held until the launcher has chosen its ports (it starts the stores after that).
        wait_for(lambda: "starting" in first.output() or first.proc.poll() is not None, 60,
                 what="the launcher past its port check")
        held.close()
        first.wait_ready()
        note = re.search(r"WORKER_METRICS_PORT: the default 9808 is in use; .* uses (\d+)", first.output())
        assert note, first.output()[-4000:]
        assert f"worker :{note.group(1)}" in first.output(), "the banner shows where the metrics went"
        metrics = f"http://127.0.0.1:{note.group(1)}/metrics"
        assert wait_for(lambda: _http_status(metrics) == 200, 20, what=metrics)
        out = first.output()
        # APP_ENV was not given: the launcher says development (unset would be production).
        for needle in ("/api/health/ready", "/api/openapi.json", "Flower", "Ctrl-C", "APP_ENV=development"):
            assert needle in out, f"banner lacks {needle!r}"
        password = secret_file.read_text().strip().partition(":")[2]
        assert password and password in out
        with pymongo.MongoClient(first.mongo_uri()) as client:
            client.devstack_e2e.marks.insert_one({"_id": "first-run"})
        _money_round_trip(first, var_dir)
        ports = [first.port, first.flower_port, *first.store_ports()]
        assert first.interrupt() == 0, first.output()[-4000:]
    finally:
        held.close()
        first.force_cleanup()
    deadline = time.monotonic() + 10
    while _stack_processes(var_dir, ports) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [(p.pid, " ".join(p.info["cmdline"] or [])) for p in _stack_processes(var_dir, ports)]
    assert survivors == [], f"orphans after Ctrl-C: {survivors}"
    assert not any(_listening(p) for p in ports)

    second = _Launch(var_dir, 2)
    try:
        second.wait_ready()
        assert secret_file.read_text().strip().partition(":")[2] == password
        with pymongo.MongoClient(second.mongo_uri()) as client:
            assert client.devstack_e2e.marks.find_one({"_id": "first-run"}) is not None
        ports = [second.port, second.flower_port, *second.store_ports()]
        assert second.interrupt() == 0, second.output()[-4000:]
    finally:
        second.force_cleanup()
    time.sleep(0.5)
    assert _stack_processes(var_dir, ports) == []


# ---------------------------------------------------------------------------
# the app-process fixtures of tests/conftest.py


def test_celery_worker_fixture_starts_pings_and_stops(celery_worker_proc, stack_env: dict[str, str]) -> None:
    worker = celery_worker_proc(queues=["ledger.0", "ledger.1"], concurrency=2)
    assert worker.alive and worker.log_path.exists()
    assert f"{worker.nodename} ready." in worker.log_tail(lines=400) or worker.probe()
    pool = worker.child_pids()
    assert len(pool) >= 2, f"prefork pool children: {pool}"

    # A fault test SIGKILLs one pool child; the worker replaces it and keeps running.
    os.kill(pool[0], signal.SIGKILL)
    assert _wait_gone(pool[0], timeout=5)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and len(worker.child_pids()) < 2:
        time.sleep(0.2)
    assert worker.alive
    assert len(worker.child_pids()) >= 2

    pid = worker.pid
    assert pid is not None
    worker.stop()
    assert _wait_gone(pid, timeout=5)
    assert all(_gone(p) for p in pool)


def test_celery_worker_fixture_kill_takes_the_pool_down(celery_worker_proc) -> None:
    worker = celery_worker_proc(concurrency=1)
    family = [worker.pid, *worker.child_pids()]
    worker.kill()
    assert all(_wait_gone(p, timeout=5) for p in family if p is not None)


def test_web_server_fixture(web_server) -> None:
    server = web_server(concurrency=1)
    assert _http_status(f"{server.base_url}/api/health") == 200
    server.stop()
    assert not _listening(server.port)


def test_stop_reaps_pool_children_of_a_sigkilled_worker(celery_worker_proc) -> None:
    worker = celery_worker_proc(concurrency=2)
    pool = worker.child_pids()
    assert worker.pid is not None and pool
    os.kill(worker.pid, signal.SIGKILL)
    worker.stop()
    assert all(_wait_gone(p, timeout=5) for p in pool)
