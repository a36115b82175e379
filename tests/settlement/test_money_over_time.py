"""Issue 25: balances as of an instant, statements that tie out, the platform report, scheduled payouts.

Settled for real (``services.settlement.settle_partition`` over the session's SecantusDB)
with a controlled clock, so a history spans two months; no worker runs (``fresh_db``),
so nothing settles with the wall clock meanwhile.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.operations import Chargeback, Credit, Gift, Payout, PayoutEvent, Refund, TopUp, Transfer
from ledger.periods import MS, Month
from tests.support.history import settle_at
from tests.support.journal import ledger_records
from tests.support.seeding import add_user, partitions

T0 = datetime(2025, 1, 1, tzinfo=UTC)
MARGIN = timedelta(seconds=120)
JAN, FEB = Month(2025, 1), Month(2025, 2)


def _replay(db: Any, wallet: str, at: datetime) -> int:
    """The ledger replayed to ``at``, by brute force: the reference balance_at must equal."""
    return sum(e["amount"] for tx in ledger_records(db, {"createdAt": {"$lte": at}})
               for e in tx["entries"] if e["walletId"] == wallet)


def _history(db: Any) -> dict[str, Any]:
    fan, creator, other = add_user(db), add_user(db, role="creator"), add_user(db)
    db.wallets.update_many({}, {"$set": {"createdAt": T0}})
    db.users.update_many({}, {"$set": {"createdAt": T0}})
    day = lambda d, h=12: T0 + timedelta(days=d - 1, hours=h)  # noqa: E731 - January day d
    settle_at(db, TopUp(fan, 10_000, "ptx-1"), day(2))
    gift = settle_at(db, Gift(fan, creator, 1_000), day(5))
    settle_at(db, Credit(other, 500, "welcome"), day(6))
    settle_at(db, Transfer(other, creator, 300), day(7))
    payout_id = "a" * 24
    settle_at(db, Payout(creator, 1_000, payout_id), day(20), job_id=payout_id)
    settle_at(db, PayoutEvent(creator, payout_id, "failed", "ev-1"), day(21))
    # February: a refund of January's gift, a chargeback of January's top-up, a paid payout.
    settle_at(db, Refund(creator, gift["_id"], 400, "requested_by_customer"), day(33))
    settle_at(db, Chargeback(fan, 2_000, "ptx-1", "cb-1"), day(34))
    paid_id = "b" * 24
    settle_at(db, Payout(creator, 600, paid_id), day(40), job_id=paid_id)
    settle_at(db, PayoutEvent(creator, paid_id, "paid", "ev-2"), day(41))
    settle_at(db, Gift(fan, creator, 2_500), day(59, 23))  # the last hours of February
    return {"fan": fan, "creator": creator, "other": other, "gift": gift["_id"], "day": day}


def test_balance_as_of_statements_and_report_tie_out_over_two_months(fresh_db: Any) -> None:
    from services import checkpoints, reports, statements
    from services.reconcile import verify_audit

    db = fresh_db
    h = _history(db)
    creator, fan = h["creator"], h["fan"]
    now = datetime(2025, 3, 10, tzinfo=UTC)
    folded = checkpoints.roll_up(db, partitions=partitions(), now=now, margin=MARGIN)
    assert folded.blocks == db.auditlogs.count_documents({"partition": {"$gte": 0}})
    assert checkpoints.roll_up(db, partitions=partitions(), now=now, margin=MARGIN).blocks == 0
    # Checkpoints sit at the month ends of wallets that moved.
    assert db.balance_checkpoints.find_one({"walletId": creator, "at": JAN.last_instant}) is not None

    for moment in [h["day"](d, hh) for d in (1, 5, 7, 20, 21, 33, 40, 41, 59, 60) for hh in (0, 12, 13)]:
        for wallet in (creator, fan, h["other"]):
            got = checkpoints.balance_at(db, wallet, moment)
            assert got.balance == _replay(db, wallet, moment), (wallet, moment)
    # Held: between the hold (day 20) and its failure (day 21), then the paid one (days 40-41).
    assert checkpoints.balance_at(db, creator, h["day"](20, 13)).held == 1_000
    assert checkpoints.balance_at(db, creator, h["day"](21, 13)).held == 0
    assert checkpoints.balance_at(db, creator, h["day"](40, 13)).held == 600
    # The chargeback left the fan in debt? 10000 - 1000 - 2000 + 400 refunded = 7400: no debt.
    assert checkpoints.balance_at(db, fan, h["day"](35)).debt == 0

    jan = statements.compute(db, creator, JAN, now, settle_margin=MARGIN)
    feb = statements.compute(db, creator, FEB, now, settle_margin=MARGIN)
    assert jan["tieOut"]["ok"] and feb["tieOut"]["ok"] and not jan["provisional"]
    assert jan["closingBalance"] == feb["openingBalance"] == 800 + 300
    assert jan["income"]["gift"] == {"count": 1, "amount": 800, "gross": 1000, "platformRevenue": 150,
                                     "processing": 50}
    assert jan["payouts"]["requested"]["amount"] == -1000 and jan["payouts"]["released"]["amount"] == 1000
    refund = next(line for line in feb["lines"] if line["kind"] == "refund")
    assert refund["originalJobId"] == h["gift"] and refund["amount"] == -320
    assert feb["payouts"]["paid"] == {"count": 1, "amount": 600}
    assert feb["closingBalance"] == 1100 - 320 - 600 + 2000
    fan_feb = statements.compute(db, fan, FEB, now, settle_margin=MARGIN)
    assert fan_feb["tieOut"]["ok"] and fan_feb["chargebacks"]["amount"] == -2000
    assert next(x for x in fan_feb["lines"] if x["kind"] == "chargeback")["originalJobId"]

    # Stored once, whoever asks first; the hash is in the statements' audit chain.
    head, created = statements.store_closed(db, creator, JAN, now, settle_margin=MARGIN)
    again, created_again = statements.store_closed(db, creator, JAN, now + timedelta(days=5), settle_margin=MARGIN)
    assert created and not created_again and again["hash"] == head["hash"]
    chain = list(db.auditlogs.find({"partition": -2}))
    assert [e["after"]["hash"] for e in chain] == [head["hash"]]
    assert verify_audit(db).ok
    served = statements.get(db, creator, JAN, now, settle_margin=MARGIN)
    assert served["lines"] == jan["lines"] and served["hash"] == head["hash"]
    parsed = list(csv.DictReader(io.StringIO(statements.csv_text(served))))
    assert [(r["jobId"], int(r["amount"])) for r in parsed] == [(x["jobId"], x["amount"]) for x in jan["lines"]]

    report = reports.platform_month(db, FEB, now, settle_margin=MARGIN)
    assert not report["provisional"] and report["tieOut"]["ok"]
    assert all(t["ok"] for t in report["platform"].values()), report["platform"]
    assert report["kinds"]["gift"]["gross"] == 2500 and report["kinds"]["refund"]["count"] == 1


def test_a_month_before_the_wallet_or_in_the_future_is_refused_and_an_empty_month_has_no_movements(
        fresh_db: Any) -> None:
    import pytest

    from services import statements

    db = fresh_db
    user = add_user(db)
    db.wallets.update_one({"_id": user}, {"$set": {"createdAt": T0 + timedelta(days=40)}})
    now = datetime(2025, 4, 10, tzinfo=UTC)
    with pytest.raises(statements.BeforeWallet):
        statements.compute(db, user, JAN, now, settle_margin=MARGIN)
    with pytest.raises(statements.NotYet):
        statements.compute(db, user, Month(2025, 5), now, settle_margin=MARGIN)
    empty = statements.compute(db, user, Month(2025, 3), now, settle_margin=MARGIN)
    assert empty["movements"] == 0 and empty["lines"] == [] and empty["tieOut"]["ok"]


def test_weekly_schedule_pays_once_per_slot_skips_with_reasons_and_includes_released_money(fresh_db: Any) -> None:
    from services import payout_schedules

    db = fresh_db
    creator = add_user(db, role="creator")
    db.wallets.update_one({"_id": creator}, {"$set": {"createdAt": T0}})
    settle_at(db, Credit(creator, 5_013, "earnings"), T0 + timedelta(hours=1))
    payout_schedules.put_schedule(db, creator, "weekly", "monday", 1_000, T0)  # 2025-01-01 is a Wednesday
    slot = datetime(2025, 1, 6, tzinfo=UTC)
    rung: list[int] = []

    def tick(at: datetime) -> Any:
        return payout_schedules.tick(db, floor=1_000, partitions=partitions(), ring=lambda p, r=None: rung.append(p),
                                     now=at)

    assert tick(slot - MS).placed == 0
    first, second = tick(slot + timedelta(minutes=5)), tick(slot + timedelta(minutes=6))
    assert (first.placed, second.placed) == (1, 0)
    job_id = payout_schedules.slot_job_id(payout_schedules.slot_key(creator, slot))
    job = db.jobs.find_one({"_id": job_id})
    assert job["params"]["amount"] == 5_013 and db.jobs.count_documents({"type": "payout"}) == 1
    # A second beat racing for the same slot after a restart finds the job: still one payout.
    db.payout_schedules.update_one({"_id": creator}, {"$set": {"nextSlot": slot}})
    assert tick(slot + timedelta(minutes=7)).existing == 1
    assert db.jobs.count_documents({"type": "payout"}) == 1
    # The provider fails it (amount ending in 13): the hold is released, the next week pays it again.
    from services.settlement import settle_partition
    settle_partition(db, job["partition"], partitions=partitions(), batch_max=10,
                     clock=lambda: slot + timedelta(minutes=8))
    settle_at(db, PayoutEvent(creator, job_id, "failed", "sim-fail"), slot + timedelta(hours=1))
    nxt = tick(slot + timedelta(days=7, minutes=1))
    assert nxt.placed == 1
    week2 = db.jobs.find_one({"_id": payout_schedules.slot_job_id(payout_schedules.slot_key(
        creator, slot + timedelta(days=7)))})
    assert week2["params"]["amount"] == 5_013
    # Frozen: the slot is skipped with the reason; DELETE stops the schedule.
    db.wallets.update_one({"_id": creator}, {"$set": {"status": "frozen"}})
    assert tick(slot + timedelta(days=14, minutes=1)).skipped == {"WALLET_FROZEN": 1}
    runs = payout_schedules.runs(db, creator)
    assert runs[0]["outcome"] == "skipped" and runs[0]["reason"] == "WALLET_FROZEN"
    assert payout_schedules.delete_schedule(db, creator, slot)
    assert tick(slot + timedelta(days=30)).placed == 0 and not payout_schedules.delete_schedule(db, creator, slot)


def test_a_stored_statement_gives_one_statement_ready_event_per_endpoint_whoever_dispatches(fresh_db: Any) -> None:
    """The statements' audit chain is the outbox of ``statement.ready``: one event per stored
    statement, one delivery per endpoint subscribed before it was stored, none on a re-run."""
    import json

    from services import statements
    from services.webhook_dispatch import dispatch_statements
    from services.webhook_endpoints import register
    from services.webhook_log import delivery_view

    db = fresh_db
    admin = {"type": "admin", "id": "a" * 24}
    creator = add_user(db, role="creator")
    db.wallets.update_one({"_id": creator}, {"$set": {"createdAt": T0}})
    settle_at(db, Credit(creator, 700, "earnings"), T0 + timedelta(days=3))
    wanted, _ = register(db, "http://127.0.0.1:9/statements", ["statement.ready"], None, admin, None,
                         allow_private=True)
    jobs_only, _ = register(db, "http://127.0.0.1:9/jobs", ["job.settled"], None, admin, None, allow_private=True)
    now = datetime(2025, 2, 10, tzinfo=UTC)
    # Nothing stored yet: nothing to dispatch.
    assert dispatch_statements(db).events == 0
    head, created = statements.store_closed(db, creator, JAN, now, settle_margin=MARGIN)
    assert created
    first = dispatch_statements(db)
    assert (first.events, len(first.deliveries), first.more) == (1, 1, False)
    db.webhook_cursors.delete_one({"_id": -2})  # a second dispatcher that read the old cursor
    again = dispatch_statements(db)
    assert (again.events, again.deliveries) == (0, [])
    [event] = list(db.webhook_events.find({"type": "statement.ready"}))
    body = json.loads(event["body"])
    assert body["id"] == event["_id"] == f"evt_statement_{creator}_2025-01"
    assert body["data"] == {
        "statementId": f"{creator}:2025-01", "userId": creator, "period": "2025-01", "hash": head["hash"],
        "linesDigest": head["linesDigest"], "openingBalance": 0, "closingBalance": 700, "net": 700, "movements": 1,
        "currency": "COIN", "generatedAt": head["generatedAt"],
        "links": {"statement": "/api/statements/2025-01",
                  "admin": f"/api/admin/wallets/{creator}/statements/2025-01"}}
    [delivery] = list(db.webhook_deliveries.find({"type": "statement.ready"}))
    assert delivery["endpointId"] == wanted["_id"] != jobs_only["_id"] and delivery["jobId"] is None
    view = delivery_view(delivery)
    assert view["statementId"] == f"{creator}:2025-01" and view["jobId"] is None
    # Stored again (a second beat, a request): no new chain entry, so no new event.
    assert not statements.store_closed(db, creator, JAN, now, settle_margin=MARGIN)[1]
    # An endpoint registered after the statement was stored does not receive it.
    register(db, "http://127.0.0.1:9/late", ["statement.ready"], None, admin, None, allow_private=True)
    statements.store_closed(db, creator, FEB, datetime(2025, 3, 10, tzinfo=UTC), settle_margin=MARGIN)
    later = dispatch_statements(db)
    assert (later.events, len(later.deliveries)) == (1, 2)  # February: both statement endpoints
    assert db.webhook_deliveries.count_documents({"statementId": f"{creator}:2025-01"}) == 1


def test_the_latest_checkpoint_is_found_at_every_distance_and_examines_only_the_nearest_window(
        fresh_db: Any) -> None:
    """Probes widen back from T (1 h, 1 d, 32 d, 366 d, then unbounded): the newest checkpoint at
    or before T whatever its age, and, with thousands of older ones, only the nearest window's keys."""
    from services.checkpoints import latest_checkpoint

    db = fresh_db
    at = datetime(2026, 6, 1, tzinfo=UTC)
    ages = [timedelta(minutes=30), timedelta(hours=5), timedelta(days=10), timedelta(days=100), timedelta(days=500)]
    db.balance_checkpoints.insert_many([{"_id": f"w:{n}", "walletId": "w", "at": at - age, "balance": n, "held": 0}
                                        for n, age in enumerate(ages)])
    db.balance_checkpoints.insert_one({"_id": "w:later", "walletId": "w", "at": at + MS, "balance": -1, "held": 0})
    assert latest_checkpoint(db, "w", at + MS)["balance"] == -1  # inclusive of T itself
    for n in range(len(ages)):
        assert latest_checkpoint(db, "w", at)["balance"] == n
        db.balance_checkpoints.delete_one({"_id": f"w:{n}"})
    assert latest_checkpoint(db, "w", at) is None and latest_checkpoint(db, "other", at) is None
    # A long history of minute checkpoints: the probe that answers examines the last hour's only.
    db.balance_checkpoints.insert_many([{"_id": f"v:{m}", "walletId": "v", "at": at - timedelta(minutes=m),
                                         "balance": m, "held": 0} for m in range(3_000)])
    assert latest_checkpoint(db, "v", at)["balance"] == 0
    plan = db.balance_checkpoints.find({"walletId": "v", "at": {"$lt": at + MS, "$gt": at - timedelta(hours=1)}}) \
        .sort("at", -1).limit(1).explain()
    assert plan["executionStats"]["totalKeysExamined"] <= 60, plan["executionStats"]
