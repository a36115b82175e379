"""Issue 25 end to end on real processes: a month's statement closed once by TWO beats, read back as
JSON and CSV, announced by ``statement.ready``; a weekly payout schedule over four weeks through
the provider simulator, one payout failing and the next week's including the released coins.

Processes (the Procfile's lines, tests/support/stack.py): gunicorn, the ledger, housekeeping
and webhooks workers, two ``celery beat`` processes with their own schedule files (closing
statements every second), the provider simulator and a webhook receiver, on a MongoDB
database and a Redis database of their own.

Time travel, as the subscription suite does it (the clock is an argument of the code under
test): the month of activity is the calendar month before today, settled in this process
with the clock at each day of it (tests/support/history.py) before the stack starts, so the
real beats, on the wall clock, find a month that is over. The payout schedule's four weekly
slots are in the future: the schedule tick (``services.payout_schedules.tick``) is called
here with ``now`` at each slot, twice, while everything it sets off (the hold, the submission
to the provider, the provider's answer through ``POST /api/payments/events``, the release)
runs in the real processes on the wall clock. The beats' own payout tick is kept idle
(``PAYOUT_SCHEDULE_TICK_SECONDS=86400``): on the wall clock no slot is due anyway.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from purser_client import verify_webhook
from pymongo import MongoClient

from devstack.ports import free_port
from devstack.provider_sim import ProviderSimProcess
from devstack.stores import stop_all
from ledger.operations import Chargeback, Gift, Payout, PayoutEvent, Refund, Subscribe, TopUp, Transfer, Unlock
from ledger.periods import MS, month_of
from ledger.statements import LINE_FIELDS
from ledger.timeutil import utcnow
from tests.support.client import ApiClient
from tests.support.env import child_env, migrated_db, redis_db
from tests.support.history import broker_ring, replay_balance, settle_at
from tests.support.invariants import assert_money_invariants
from tests.support.receiver import Receiver
from tests.support.seeding import User, new_id, partitions, seed_users
from tests.support.stack import Beat, RoleWorker, Web
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

DB_NAME = "purser_money_over_time"
REDIS_DB = 13  # this module's broker: no other suite's worker reads it
EVENTS = ["statement.ready", "payout.pending", "payout.paid", "payout.failed"]
NUMBERS = ("amount", "gross", "creatorShare", "platformRevenue", "processing")


def _month_of_activity(db: Any, creator: User, fans: list[User]) -> dict[str, Any]:
    """Last month, day by day: top-ups, gifts every day, an unlock, a subscription, a transfer,
    a refund and a chargeback of earlier money, a payout paid and one failed."""
    month = month_of(utcnow()).previous()
    for user in [creator, *fans]:
        db.users.update_one({"_id": user.id}, {"$set": {"createdAt": month.start}})
        db.wallets.update_one({"_id": user.id}, {"$set": {"createdAt": month.start}})
    db.plans.insert_one({"_id": creator.id, "price": 999, "periodDays": 30, "isActive": True,
                         "createdAt": month.start})
    content = new_id()
    db.contents.insert_one({"_id": content, "creatorId": creator.id, "title": "backstage", "price": 500,
                            "isActive": True, "createdAt": month.start})

    def day(d: int, hour: int = 12) -> Any:
        return month.start + timedelta(days=d - 1, hours=hour)

    for n, fan in enumerate(fans):
        settle_at(db, TopUp(fan.id, 20_000, f"ptx-e2e-{n}"), day(1, 8))
    gifts = [settle_at(db, Gift(fans[d % 2].id, creator.id, 100 + d), day(d))["_id"] for d in range(2, 28)]
    settle_at(db, Unlock(fans[0].id, content), day(6, 15))
    settle_at(db, Subscribe(fans[1].id, creator.id, True), day(8, 9))
    settle_at(db, Transfer(fans[0].id, creator.id, 300), day(11, 18))
    settle_at(db, Refund(creator.id, gifts[3], 50, "requested_by_customer"), day(14, 16))
    settle_at(db, Chargeback(fans[1].id, 500, "ptx-e2e-1", "cb-e2e-1"), day(16, 10))
    paid, failed = new_id(), new_id()
    settle_at(db, Payout(creator.id, 1_000, paid), day(20, 9), job_id=paid)
    settle_at(db, PayoutEvent(creator.id, paid, "paid", "ev-e2e-1"), day(21, 9))
    settle_at(db, Payout(creator.id, 1_013, failed), day(24, 9), job_id=failed)
    settle_at(db, PayoutEvent(creator.id, failed, "failed", "ev-e2e-2"), day(25, 9))
    return {"month": month, "paid": paid, "failed": failed}


def _line_from_csv(row: dict[str, str]) -> dict[str, Any]:
    return {k: (None if row[k] == "" else int(row[k]) if k in NUMBERS else row[k]) for k in LINE_FIELDS}


def _events(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    out = []
    for record in receiver.received("/money"):
        payload = verify_webhook(secret, record["headers"], record["body"], now=record["receivedAt"])
        assert record["headers"]["webhook-id"] == payload["id"]
        out.append(payload)
    return out


@dataclasses.dataclass
class Stack:
    env: dict[str, str]
    db: Any
    http: ApiClient
    receiver: Receiver
    beats: list[Beat]
    processes: list[Any]

    def tail(self) -> str:
        return "\n".join(p.log_tail(30) for p in self.processes if hasattr(p, "log_tail"))


@pytest.fixture
def stack(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Stack]:
    migrated_db(stack_env["MONGODB_URI"], DB_NAME)
    sim_port = free_port()
    env = child_env(stack_env, MONGODB_DB=DB_NAME, REDIS_URL=redis_db(stack_env["REDIS_URL"], REDIS_DB),
                    STATEMENT_TICK_SECONDS="1", ROLLUP_INTERVAL_SECONDS="2", WEBHOOK_TICK_SECONDS="1",
                    PAYOUT_SCHEDULE_TICK_SECONDS="86400", SWEEP_INTERVAL_SECONDS="2", WORKER_CONCURRENCY="2",
                    WEBHOOK_BACKOFF_SECONDS="1,1,1,1", PROVIDER_SIM_DELAY_SECONDS="0.2",
                    PAYOUT_PROVIDER_URL=f"http://127.0.0.1:{sim_port}")
    client: MongoClient = MongoClient(stack_env["MONGODB_URI"], tz_aware=True)
    receiver = Receiver(tmp_path / "receiver.log")
    web = Web(env, tmp_path / "gunicorn.log", concurrency=1)
    processes: list[Any] = [receiver, web, RoleWorker("worker", env, tmp_path / "worker.log"),
                            RoleWorker("housekeeping", env, tmp_path / "housekeeping.log"),
                            RoleWorker("webhooks", env, tmp_path / "webhooks.log"),
                            ProviderSimProcess(env, tmp_path / "provider-sim.log", web.base_url, port=sim_port)]
    started: list[Any] = []
    http = ApiClient(web.base_url, timeout=30)
    try:
        for process in processes:
            started.append(process)
            process.start(timeout=60)
        beats = [Beat(env, tmp_path / f"beat-{n}.log", tmp_path / f"celerybeat-{n}", name=f"beat-{n}")
                 for n in (1, 2)]
        yield Stack(env, client[DB_NAME], http, receiver, beats, started)
    finally:
        http.close()
        stop_all(started)
        client.close()



def test_a_month_closed_once_by_two_beats_and_a_weekly_schedule_over_four_weeks(stack: Stack) -> None:
    from services import payout_schedules

    s, db = stack, stack.db
    now = utcnow()
    if now < month_of(now).start + timedelta(minutes=5):
        pytest.skip("last month is not closed yet for the first minutes of a month (HISTORY_MARGIN_SECONDS)")
    admin = seed_users(db, 1, role="admin", prefix="e2eadmin")[0]
    creator = seed_users(db, 1, role="creator", prefix="e2ecreator")[0]
    fans = seed_users(db, 2, prefix="e2efan")
    history = _month_of_activity(db, creator, fans)
    month = history["month"]

    r = s.http.request("POST", "/api/admin/webhooks", token=admin,
                       json_body={"url": s.receiver.url("/money"), "eventTypes": EVENTS})
    assert r.status == 201, r
    secret = r.json["secret"]

    # --- the month's statement: two beats close it, once --------------------------------
    for beat in s.beats:
        s.processes.append(beat)
        beat.start(timeout=60)
    head = wait_for(lambda: db.statements.find_one({"_id": f"{creator.id}:{month.label}"}), 60, poll=0.2,
                    what="the statement stored by beat")
    # Let both beats send several more ticks: still one statement and one chain entry.
    wait_for(lambda: all(b.log_tail(400).count("statements-close") >= 4 for b in s.beats), 60, poll=0.5,
             what="four statement ticks from each beat")
    assert db.statements.count_documents({"userId": creator.id}) == 1
    chain = list(db.auditlogs.find({"partition": -2}))
    assert [e["target"]["id"] for e in chain] == [head["_id"]], chain
    assert chain[0]["after"]["hash"] == head["hash"]

    def ready() -> list[dict[str, Any]] | None:
        got = [e for e in _events(s.receiver, secret) if e["type"] == "statement.ready"]
        return got or None

    [event] = wait_for(ready, 30, poll=0.3, what="statement.ready delivered")  # type: ignore[misc]
    assert event["id"] == f"evt_statement_{creator.id}_{month.label}"
    data = event["data"]
    assert (data["userId"], data["period"], data["hash"], data["closingBalance"]) == \
        (creator.id, month.label, head["hash"], head["closingBalance"])
    assert data["links"]["statement"] == f"/api/statements/{month.label}"

    body = s.http.request("GET", data["links"]["statement"], token=creator)
    assert body.status == 200, body
    statement = body.json
    assert not statement["provisional"] and statement["tieOut"]["ok"] and statement["hash"] == head["hash"]
    assert statement["closingBalance"] == replay_balance(db, creator.id, month.last_instant)
    # 26 gifts, the unlock, subscription, transfer, refund, two holds and one release (the paid
    # payout's event moves in-flight coins only: it is in ``payouts.paid``, not a line).
    assert statement["openingBalance"] == 0 and statement["movements"] == len(statement["lines"]) == 26 + 7
    assert statement["income"]["gift"]["count"] == 26 and statement["refunds"]["count"] == 1
    assert statement["payouts"]["paid"] == {"count": 1, "amount": 1_000}
    assert statement["payouts"]["released"]["amount"] == 1_013
    as_csv = s.http.request("GET", data["links"]["statement"], token=creator, headers={"Accept": "text/csv"})
    assert as_csv.status == 200 and as_csv.headers["Content-Type"].startswith("text/csv"), as_csv
    rows = list(csv.DictReader(io.StringIO(as_csv.body.decode())))
    assert [_line_from_csv(row) for row in rows] == statement["lines"]  # every field of every line
    admin_view = s.http.request("GET", data["links"]["admin"], token=admin)
    assert admin_view.status == 200 and admin_view.json == statement
    listed = s.http.request("GET", "/api/statements", token=creator).json["items"]
    assert {"period": month.label, "stored": True, "hash": head["hash"],
            "closingBalance": head["closingBalance"]} in listed

    # --- a weekly schedule over four weeks ----------------------------------------------
    earner = seed_users(db, 1, role="creator", prefix="e2eweekly")[0]
    ring = broker_ring(s.env["REDIS_URL"])

    def top_up(amount: int) -> None:
        r = s.http.webhook(earner.id, amount)
        assert r.status == 202, r
        assert s.http.wait_job(admin, r.json["jobId"])["status"] == "settled"

    top_up(5_013)
    r = s.http.request("PUT", "/api/payouts/schedule", token=earner,
                       json_body={"interval": "weekly", "anchor": "monday", "minimum": 1_000})
    assert r.status == 200, r
    first_slot = db.payout_schedules.find_one({"_id": earner.id})["nextSlot"]
    earnings = [None, 1_050, 2_000, 3_000]  # topped up before weeks 2-4 (6_063: not ending in 13)
    expected = [(5_013, "failed"), (6_063, "paid"), (2_000, "paid"), (3_000, "paid")]
    payout_ids = []
    for week, (amount, status) in enumerate(expected):
        if earnings[week]:
            top_up(earnings[week])
        slot = first_slot + timedelta(days=7 * week)
        assert payout_schedules.tick(db, floor=1_000, partitions=partitions(), ring=ring, now=slot - MS).placed == 0
        ticks = [payout_schedules.tick(db, floor=1_000, partitions=partitions(), ring=ring,
                                       now=slot + timedelta(minutes=m)) for m in (1, 2)]
        assert [(t.placed, t.existing) for t in ticks] == [(1, 0), (0, 0)], ticks
        payout_id = payout_schedules.slot_job_id(payout_schedules.slot_key(earner.id, slot))
        payout_ids.append(payout_id)

        def terminal(payout_id: str = payout_id) -> dict[str, Any] | None:
            doc = db.payouts.find_one({"_id": payout_id})
            return doc if doc is not None and doc["status"] in ("paid", "failed") else None

        doc = wait_for(terminal, 60, poll=0.3, what=f"week {week + 1}'s payout answered by the provider")
        assert (doc["amount"], doc["status"]) == (amount, status), (week, doc, s.tail())
        if status == "failed":  # released: the spendable balance is whole again before next week
            wait_for(lambda whole=amount: (db.wallets.find_one({"_id": earner.id}) or {}).get("balance") == whole,
                     30, what="the failed payout released")
    runs = payout_schedules.runs(db, earner.id)
    assert [(x["outcome"], x["amount"]) for x in reversed(runs)] == [("placed", a) for a, _ in expected]
    assert db.payouts.count_documents({"userId": earner.id}) == 4

    # The scheduled payouts sent the ordinary payout events, each once.
    want = Counter({("payout.pending", p): 1 for p in payout_ids})
    want.update({("payout.failed", payout_ids[0]): 1})
    want.update({("payout.paid", p): 1 for p in payout_ids[1:]})

    def payout_events() -> Counter | None:
        got = Counter((e["type"], (e["data"].get("result") or {}).get("payoutId"))
                      for e in _events(s.receiver, secret) if e["type"].startswith("payout."))
        got = Counter({k: v for k, v in got.items() if k[1] in payout_ids})
        return got if got == want else None

    wait_for(payout_events, 45, poll=0.5, what=f"payout events {dict(want)}")
    time.sleep(1.0)  # a late duplicate would show now
    assert [e for e in _events(s.receiver, secret) if e["type"] == "statement.ready"] == [event]
    assert_money_invariants(db)
