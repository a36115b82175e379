"""Issue 24, lever 2: group commit at the door (``ACCEPT_LINGER_MS`` > 0, services/group_commit.py).

The Flask app runs in this process with its MongoDB client counted on the wire (a
pymongo ``CommandListener``, ``loadtest.commands.CommandCounter``) and requests sent
from threads, one test client each, so they meet inside one linger. Its doorbell is
the real one (``tasks.settle.ring``), recorded on the way: the session's Celery
workers settle every job and each test ends with the money invariants. Faults are
real: SecantusDB's ``failCommand`` fail point on this process's connections, and a
gunicorn worker SIGKILLed while requests wait in its linger.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
from pymongo.database import Database

import infra.config
import infra.mongo
from loadtest.commands import CommandCounter
from tests.api.helpers import Api, User, assert_problem
from tests.support.client import ApiClient, Response
from tests.support.invariants import assert_money_invariants

TRANSFER = "/api/wallet/transfer"
APP = "purser-group-commit"
LINGER_MS = 100  # long enough for a handful of threads on a busy machine to meet in one batch


@dataclass
class Door:
    """The app under test: its :class:`Api`, the counted commands and the doorbells it rang."""

    api: Api
    app: Any
    counter: CommandCounter
    rings: list[tuple[int, str | None]] = field(default_factory=list)

    def at_once(self, calls: list[Callable[[Api], Response]]) -> list[Response]:
        """``calls`` from as many threads, released together, each with its own test client."""
        gate = threading.Barrier(len(calls))

        def run(call: Callable[[Api], Response]) -> Response:
            api = Api(ApiClient(flask_client=self.app.test_client()), self.api.db)
            gate.wait()
            return call(api)

        with ThreadPoolExecutor(len(calls)) as pool:
            return list(pool.map(run, calls))


@pytest.fixture
def door(fresh_db: Database, session_worker: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Door]:
    from api import create_app
    from api.money import RINGER_EXTENSION
    from tasks.settle import ring

    monkeypatch.setenv("ACCEPT_LINGER_MS", str(LINGER_MS))
    infra.config.reset_settings()
    counter = CommandCounter()
    original = infra.mongo.MongoClient
    monkeypatch.setattr(infra.mongo, "MongoClient", lambda *a, **kw: original(*a, event_listeners=[counter], **kw))
    infra.mongo.set_app_name(APP)  # fail points below hit this process's app, not the test's own reads
    app = create_app(infra.config.get_settings())
    door = Door(Api(ApiClient(flask_client=app.test_client()), fresh_db), app, counter)

    def recorded(partition: int, request_id: str | None) -> None:
        door.rings.append((partition, request_id))
        ring(partition, request_id)

    app.extensions[RINGER_EXTENSION] = recorded
    try:
        yield door
    finally:
        fresh_db.client.admin.command("configureFailPoint", "failCommand", mode="off")
        infra.mongo.close_client()
        monkeypatch.undo()
        infra.mongo.set_app_name("purser")
        infra.config.reset_settings()


def _people(door: Door, payers: int) -> tuple[list[User], User]:
    api = door.api
    people = [api.user() for _ in range(payers + 1)]
    for payer in people[:payers]:
        api.fund(payer, 100)
    door.counter.take()
    door.rings.clear()
    return people[:payers], people[payers]


def _send(payer: User, payee: User, amount: int, key: str) -> Callable[[Api], Response]:
    return lambda api: api.money(TRANSFER, payer, {"receiverId": payee.id, "amount": amount}, key=key)


def _inserts(counter: CommandCounter) -> tuple[int, int]:
    """(insert commands, documents they carried) on ``jobs`` since the last take."""
    tally = counter.take()
    return tally.commands["insert jobs"], tally.documents["insert jobs"]


def test_requests_within_one_linger_share_one_insert_and_each_gets_its_own_job(door):
    payers, payee = _people(door, 6)
    answers = door.at_once([_send(p, payee, 10 + n, f"batch-{n}") for n, p in enumerate(payers)])

    assert [r.status for r in answers] == [202] * 6, answers
    assert not any("Idempotent-Replayed" in r.headers for r in answers)
    assert _inserts(door.counter) == (1, 6)  # ONE insert_many carried the six jobs
    ids = [r.json["jobId"] for r in answers]
    assert len(set(ids)) == 6
    for n, (payer, r) in enumerate(zip(payers, answers, strict=True)):
        job = door.api.db.jobs.find_one({"_id": r.json["jobId"]})
        assert job["ownerId"] == payer.id and job["idem"]["key"] == f"batch-{n}" and job["params"]["amount"] == 10 + n
    # One doorbell per partition of the batch, not one per request.
    partitions = [p for p, _ in door.rings]
    assert sorted(partitions) == sorted({door.api.db.jobs.find_one({"_id": i})["partition"] for i in ids})
    for payer, r in zip(payers, answers, strict=True):
        door.api.expect_settled(payer, r)
    assert door.api.balance(payee) == sum(10 + n for n in range(6))
    assert_money_invariants(door.api.db, accepted_job_ids=set(ids))


def test_the_same_key_twice_in_one_batch_replays_the_first_or_is_refused(door):
    (alice, bob, carol), payee = _people(door, 3)
    same = door.at_once([_send(alice, payee, 30, "twice"), _send(alice, payee, 30, "twice"),
                         _send(bob, payee, 5, "bystander")])
    assert _inserts(door.counter) == (1, 3)  # all three in one batch, the duplicate refused inside it
    first, second, bystander = same
    assert {first.status, second.status} == {202} and bystander.status == 202, same
    assert first.body == second.body and first.headers["Location"] == second.headers["Location"]
    assert sorted(r.headers.get("Idempotent-Replayed", "") for r in (first, second)) == ["", "true"]
    assert door.api.job_count(ownerId=alice.id) == 2  # the top-up and ONE transfer

    other = door.at_once([_send(carol, payee, 20, "reused"), _send(carol, payee, 21, "reused")])
    assert _inserts(door.counter) == (1, 2)
    assert sorted(r.status for r in other) == [202, 422], other
    assert_problem(next(r for r in other if r.status == 422), 422, "IDEMPOTENCY_KEY_REUSED")
    accepted = next(r for r in other if r.status == 202)
    assert door.api.job_count(ownerId=carol.id, type="transfer") == 1

    for who, r in ((alice, first), (bob, bystander), (carol, accepted)):
        door.api.expect_settled(who, r)
    assert (door.api.balance(alice), door.api.balance(bob)) == (70, 95)
    kept = door.api.db.jobs.find_one({"_id": accepted.json["jobId"]})["params"]["amount"]
    assert kept in (20, 21) and door.api.balance(carol) == 100 - kept
    assert_money_invariants(door.api.db)


def _arm(db: Database, **data: Any) -> None:
    db.client.admin.command("configureFailPoint", "failCommand", mode={"times": 1},
                            data={"failCommands": ["insert"], "appName": APP, **data})


@pytest.mark.parametrize("fault, stored", [({"closeConnection": True}, False),
                                           ({"writeConcernError": {"code": 64, "errmsg": "injected"}}, True)])
def test_a_failed_batch_fails_every_request_and_each_retry_is_accepted_once(door, fault, stored):
    payers, payee = _people(door, 4)
    calls = [_send(p, payee, 15, f"fail-{n}") for n, p in enumerate(payers)]
    _arm(door.api.db, **fault)
    failed = door.at_once(calls)
    assert _inserts(door.counter) == (1, 4)
    for r in failed:  # the outcome is unknown to each request: retry with the same key
        assert_problem(r, 503, "SERVICE_UNAVAILABLE")
    # Nothing half-applied: the whole batch or none of it (closeConnection: before it ran).
    assert door.api.job_count(type="transfer") == (4 if stored else 0)

    retried = door.at_once(calls)
    assert [r.status for r in retried] == [202] * 4, retried
    assert all(("Idempotent-Replayed" in r.headers) == stored for r in retried)
    assert door.api.job_count(type="transfer") == 4
    if stored:  # the failed requests never rang: ring as beat's sweeper would
        from tasks.settle import ring
        for partition in {j["partition"] for j in door.api.db.jobs.find({"type": "transfer"})}:
            ring(partition, None, force=True)
    for payer, r in zip(payers, retried, strict=True):
        door.api.expect_settled(payer, r)
    assert door.api.balance(payee) == 60
    assert_money_invariants(door.api.db, accepted_job_ids={r.json["jobId"] for r in retried})


def _metric(client: ApiClient, name: str) -> float:
    text = client.request("GET", "/metrics").body.decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


# --- a web process killed with requests waiting in its linger ---------------------------


def test_a_web_process_killed_mid_linger_loses_nothing_acknowledged_and_settles_nothing_twice(
        fresh_db: Database, session_worker: Any, web_server: Callable[..., Any]) -> None:
    server = web_server(concurrency=1, extra_env={"ACCEPT_LINGER_MS": "100"})
    client = ApiClient(base_url=server.base_url, timeout=20)
    api = Api(client, fresh_db)
    payers, payee = [api.user() for _ in range(6)], api.user()
    for payer in payers:
        api.fund(payer, 1000)

    sent: dict[str, tuple[User, int, Response]] = {}  # key -> (payer, amount, first answer)
    lock, stop = threading.Lock(), threading.Event()

    def keep_sending(payer: User) -> None:
        while not stop.is_set():
            key, amount = uuid.uuid4().hex, 1 + len(sent) % 7
            r = client.money(TRANSFER, payer.token, {"receiverId": payee.id, "amount": amount}, key=key)
            with lock:
                sent[key] = (payer, amount, r)

    threads = [threading.Thread(target=keep_sending, args=(p,)) for p in payers]
    for t in threads:
        t.start()
    time.sleep(1.0)
    (worker,) = psutil.Process(server.pid).children()
    worker.kill()  # SIGKILL: batches lingering, being written or answered die with it
    time.sleep(1.5)  # gunicorn's master starts another worker; the senders carry on
    stop.set()
    for t in threads:
        t.join()

    unanswered = {k: v for k, v in sent.items() if v[2].status != 202}
    assert any(r.status == 0 for _, _, r in unanswered.values()), \
        "no request was in flight when the worker died: the scenario proved nothing"
    for _, _, r in unanswered.values():  # cut off, or shed while the new worker caught up: nothing stored
        assert r.status == 0 or r.json["code"] == "BACKLOG_FULL", r
    # Every unanswered request retried with its key: replayed if its batch was written, else a first.
    replays = 0
    for key, (payer, amount, _) in unanswered.items():
        deadline = time.monotonic() + 20
        while (r := client.money(TRANSFER, payer.token, {"receiverId": payee.id, "amount": amount},
                                 key=key)).status in (0, 503) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status == 202, r
        replays += r.headers.get("Idempotent-Replayed") == "true"
        sent[key] = (payer, amount, r)

    accepted = {r.json["jobId"] for _, _, r in sent.values()}
    assert len(accepted) == len(sent)  # one job per key, whatever the kill interrupted
    transfers = list(fresh_db.jobs.find({"type": "transfer"}, {"idem.key": 1}))
    assert len(transfers) == len(sent) and {j["idem"]["key"] for j in transfers} == set(sent)
    # Jobs written by the dead worker were never rung by it: the sweeper's ring, as beat would.
    from tasks.settle import ring
    for partition in {j["partition"] for j in fresh_db.jobs.find({"status": "queued"}, {"partition": 1})}:
        ring(partition, None, force=True)
    figures = assert_money_invariants(fresh_db, accepted_job_ids=accepted)
    batches = _metric(client, "purser_accept_batch_size_count")
    batched = _metric(client, "purser_accept_batch_size_sum")
    assert batched > batches > 0, (batches, batched)  # the gunicorn workers did group their inserts
    assert api.balance(payee) == sum(amount for _, amount, _ in sent.values())
    print(f"killed mid-linger: {len(sent)} requests, {len(unanswered)} unanswered, {replays} replayed "
          f"on retry; {figures}")
    client.close()
