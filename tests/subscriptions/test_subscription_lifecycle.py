"""Issue 7: subscribe, renew per period from the old expiresAt, cancel, expire; ticks that race."""

from __future__ import annotations

import time
from datetime import timedelta

from ledger.operations import Subscribe
from ledger.timeutil import utcnow
from services.queries import audit_entry_of
from tests.support.invariants import assert_money_invariants
from tests.support.journal import count_records, ledger_records
from tests.support.load import fire
from tests.support.seeding import add_user, add_users, new_id, partitions
from tests.support.settle import (
    balances,
    doorbell,
    fund,
    fund_here,
    live_ring,
    noop_ring,
    settle_here,
    submit,
    wait_jobs,
)
from tests.support.waiting import wait_drained

PRICE, PERIOD = 999, 30
# 999 split 80/15/5 by largest remainder: 799.2 / 149.85 / 49.95 -> 799 / 150 / 50.
SPLIT = {"creator": 799, "platform:revenue": 150, "platform:processing": 50}


def _tick(db, now, ring=None, chunk=500):
    from services.subscriptions import tick

    return tick(db, now=now, chunk=chunk, partitions=partitions(), ring=ring or live_ring())


def _renewal_id(sub):
    from services.subscriptions import renewal_job_id, renewal_key

    return renewal_job_id(renewal_key(sub["_id"], sub["expiresAt"]))


def _plan(db, creator, price=PRICE, period=PERIOD, active=True):
    db.plans.insert_one({"_id": creator, "price": price, "periodDays": period, "isActive": active,
                         "createdAt": utcnow()})


def _subscribe(db, fan, creator, auto_renew=True):
    job = submit(db, Subscribe(fan, creator, auto_renew), ring=live_ring())
    done = wait_jobs(db, [job["_id"]])[job["_id"]]
    assert done["status"] == "settled", done["error"]
    return done, db.subscriptions.find_one({"_id": job["_id"]})


def _money(db, fan, creator):
    return balances(db, [fan, creator, "platform:revenue", "platform:processing"])


def test_subscribe_renew_three_periods_cancel_and_expire_with_exact_money(db):
    fan, creator = add_user(db), add_user(db, role="creator")
    _plan(db, creator)
    fund(db, [fan], 5000)
    job, sub = _subscribe(db, fan, creator)
    assert job["result"]["split"] == SPLIT and job["result"]["subscriptionId"] == sub["_id"]
    assert sub["status"] == "active" and sub["autoRenew"] is True and sub["renewals"] == 0
    assert (sub["price"], sub["periodDays"], sub["subscriberId"], sub["creatorId"]) == (PRICE, PERIOD, fan, creator)
    assert sub["expiresAt"] == sub["startedAt"] + timedelta(days=PERIOD) == job["settledAt"] + timedelta(days=PERIOD)
    assert _money(db, fan, creator) == {fan: 4001, creator: 799, "platform:revenue": 150, "platform:processing": 50}

    # Subscribing again while active is refused.
    again = submit(db, Subscribe(fan, creator), ring=live_ring())
    assert wait_jobs(db, [again["_id"]])[again["_id"]]["error"]["code"] == "ALREADY_SUBSCRIBED"

    # Not yet due: nothing happens.
    early = _tick(db, sub["expiresAt"] - timedelta(seconds=1))
    assert (early.expired, early.renewals_submitted, early.scanned) == (0, 0, 0)

    for period in (1, 2, 3):
        old_expiry = sub["expiresAt"]
        # The tick runs late (days after the period ended): the new period still
        # starts at the old expiresAt, not at the tick's clock.
        late_now = old_expiry + timedelta(days=period)
        result = _tick(db, late_now)
        assert result.renewals_submitted == 1 and result.scanned == 1
        renewal = wait_jobs(db, [_renewal_id(sub)])[_renewal_id(sub)]
        assert renewal["status"] == "settled", renewal["error"]
        assert renewal["type"] == "renew" and renewal["idempotencyKey"].startswith(f"renew:{sub['_id']}:")
        assert renewal["result"]["split"] == SPLIT
        sub = db.subscriptions.find_one({"_id": sub["_id"]})
        assert sub["expiresAt"] == old_expiry + timedelta(days=PERIOD)
        assert sub["renewals"] == period and sub["status"] == "active"
        paid = period + 1
        assert _money(db, fan, creator) == {fan: 5000 - PRICE * paid, creator: 799 * paid,
                                            "platform:revenue": 150 * paid, "platform:processing": 50 * paid}
        # A second tick with the same clock finds the period already renewed.
        assert _tick(db, late_now).renewals_submitted == 0

    assert count_records(db, {"type": "renew"}) == 3

    # Cancel: stops auto-renewal, access lasts until expiresAt, then it expires unpaid.
    db.subscriptions.update_one({"_id": sub["_id"], "subscriberId": fan, "status": "active"},
                                {"$set": {"autoRenew": False, "cancelledAt": utcnow()}})
    before = _money(db, fan, creator)
    assert _tick(db, sub["expiresAt"] - timedelta(minutes=1)).expired == 0
    assert db.subscriptions.find_one({"_id": sub["_id"]})["status"] == "active"
    ended = _tick(db, sub["expiresAt"])
    assert (ended.expired, ended.renewals_submitted) == (1, 0)
    sub = db.subscriptions.find_one({"_id": sub["_id"]})
    assert sub["status"] == "expired" and sub["endedReason"] == "NOT_RENEWED"
    assert sub["endedAt"] == sub["expiresAt"] and sub["renewals"] == 3
    assert _tick(db, sub["expiresAt"] + timedelta(days=400)).expired == 0
    assert _money(db, fan, creator) == before == {fan: 1004, creator: 3196, "platform:revenue": 600,
                                                  "platform:processing": 200}
    wait_drained(db)
    # Subscribing again after the end starts a new subscription.
    _, second = _subscribe(db, fan, creator)
    assert second["_id"] != sub["_id"] and second["status"] == "active"
    assert balances(db, [fan])[fan] == 1004 - PRICE
    assert_money_invariants(db)


def test_a_renewal_that_fails_for_funds_expires_the_subscription_without_a_charge(db):
    fan, creator = add_user(db), add_user(db)
    _plan(db, creator)
    fund(db, [fan], PRICE + 500)  # the first period, not the second
    _, sub = _subscribe(db, fan, creator)
    before = _money(db, fan, creator)
    result = _tick(db, sub["expiresAt"] + timedelta(hours=1))
    assert result.renewals_submitted == 1
    renewal = wait_jobs(db, [_renewal_id(sub)])[_renewal_id(sub)]
    assert renewal["status"] == "failed" and renewal["error"]["code"] == "INSUFFICIENT_FUNDS"
    sub = db.subscriptions.find_one({"_id": sub["_id"]})
    assert sub["status"] == "expired" and sub["endedReason"] == "INSUFFICIENT_FUNDS"
    assert sub["expiresAt"] == sub["startedAt"] + timedelta(days=PERIOD) and sub["renewals"] == 0
    assert _money(db, fan, creator) == before
    assert count_records(db, {"type": "renew"}) == 0
    assert audit_entry_of(db, renewal["_id"])[1]["outcome"] == "failed"
    # Nothing more to do for later ticks.
    assert _tick(db, sub["expiresAt"] + timedelta(days=90)).scanned == 0
    assert_money_invariants(db)


def test_a_subscriber_who_cancels_after_the_tick_submitted_the_renewal_is_not_charged(db):
    fan, creator = add_user(db), add_user(db)
    _plan(db, creator)
    # The fan's partition is settled in this process until the renewal's doorbell, so
    # no worker can take the renewal before the cancel.
    fund_here(db, [fan], 5 * PRICE)
    subscribe = submit(db, Subscribe(fan, creator), ring=noop_ring)
    settle_here(db, subscribe["partition"])
    sub = db.subscriptions.find_one({"_id": subscribe["_id"]})
    before = _money(db, fan, creator)
    due = sub["expiresAt"] + timedelta(minutes=5)
    # The tick stores the renewal; its doorbell is delayed (never published here).
    assert _tick(db, due, ring=noop_ring).renewals_submitted == 1
    assert db.jobs.find_one({"_id": _renewal_id(sub)})["status"] == "queued"
    db.subscriptions.update_one({"_id": sub["_id"], "status": "active"}, {"$set": {"autoRenew": False}})
    doorbell(db.jobs.find_one({"_id": _renewal_id(sub)})["partition"])
    renewal = wait_jobs(db, [_renewal_id(sub)])[_renewal_id(sub)]
    assert renewal["status"] == "failed" and renewal["error"]["code"] == "RENEWAL_STALE"
    assert _money(db, fan, creator) == before
    # The next tick lets the cancelled period lapse.
    assert _tick(db, due).expired == 1
    sub = db.subscriptions.find_one({"_id": sub["_id"]})
    assert sub["status"] == "expired" and sub["endedReason"] == "NOT_RENEWED"
    assert_money_invariants(db)


def test_a_plan_withdrawn_before_renewal_ends_the_subscription_without_a_charge(db):
    fan, creator = add_user(db), add_user(db)
    _plan(db, creator)
    fund(db, [fan], 5 * PRICE)
    _, sub = _subscribe(db, fan, creator)
    before = _money(db, fan, creator)
    db.plans.update_one({"_id": creator}, {"$set": {"isActive": False}})
    result = _tick(db, sub["expiresAt"])
    assert (result.no_plan, result.renewals_submitted) == (1, 0)
    sub = db.subscriptions.find_one({"_id": sub["_id"]})
    assert sub["status"] == "expired" and sub["endedReason"] == "NO_PLAN"
    assert _money(db, fan, creator) == before
    assert_money_invariants(db)


def _seed_due_subscriptions(db, subscribers, creators, now):
    """subscribers x creators active, auto-renewing, already due (many share an instant)."""
    docs = []
    for i, fan in enumerate(subscribers):
        for j, creator in enumerate(creators):
            n = i * len(creators) + j
            docs.append({"_id": new_id(), "subscriberId": fan, "creatorId": creator, "price": 10,
                         "periodDays": PERIOD, "status": "active", "autoRenew": True,
                         "startedAt": now - timedelta(days=PERIOD + 1),
                         "expiresAt": now - timedelta(minutes=n % 7), "renewals": 0,
                         "jobId": None, "createdAt": now - timedelta(days=PERIOD + 1)})
    db.subscriptions.insert_many(docs)
    return docs


def test_two_concurrent_ticks_over_1000_due_subscriptions_renew_each_exactly_once(db):
    now = utcnow()
    subscribers, creators = add_users(db, 100), add_users(db, 10)
    for creator in creators:
        _plan(db, creator, price=10)
    # Exactly one period each: a second charge would fail for funds and expire it.
    fund(db, subscribers, 100)
    seeded = {s["_id"]: s for s in _seed_due_subscriptions(db, subscribers, creators, now)}
    assert len(seeded) == 1000

    ring = live_ring()
    # Two ticks released at the same instant (fire re-raises a tick's error).
    results = fire(lambda _: _tick(db, now, ring=ring, chunk=97), range(2), workers=2)
    # Every renewal job was stored by exactly one of the two ticks.
    assert sum(r.renewals_submitted for r in results) == 1000
    wait_drained(db, timeout=180)

    renewals = list(db.jobs.find({"type": "renew"}, {"params": 1, "status": 1, "error": 1}))
    assert len(renewals) == 1000
    assert {j["status"] for j in renewals} == {"settled"}, {j["error"]["code"] for j in renewals if j["error"]}
    charged = {}
    for tx in ledger_records(db, {"type": "renew"}, {"jobId": 1}):
        charged[tx["jobId"]] = charged.get(tx["jobId"], 0) + 1
    per_sub = {}
    for job in renewals:
        sid = job["params"]["subscription_id"]
        per_sub[sid] = per_sub.get(sid, 0) + charged.get(job["_id"], 0)
    assert per_sub == {sid: 1 for sid in seeded}
    for sub in db.subscriptions.find({}):
        assert sub["status"] == "active" and sub["renewals"] == 1, sub
        assert sub["expiresAt"] == seeded[sub["_id"]]["expiresAt"] + timedelta(days=PERIOD)
    assert set(balances(db, subscribers).values()) == {0}
    assert set(balances(db, creators).values()) == {100 * 8}
    # Ticks after the fact find nothing due.
    assert _tick(db, now, ring=ring).scanned == 0
    assert_money_invariants(db)


def test_the_redis_lock_makes_a_second_concurrent_tick_skip(db, session_worker):
    from infra.redis_client import get_redis
    from tasks.subscriptions import LOCK_KEY, tick

    fan, creator = add_user(db), add_user(db)
    _plan(db, creator, price=10)
    fund(db, [fan], 100)
    now = utcnow()
    [sub] = _seed_due_subscriptions(db, [fan], [creator], now - timedelta(seconds=5))
    redis = get_redis()
    # Another tick holds the lock.
    assert redis.set(LOCK_KEY, "other-tick", nx=True, ex=60)
    skipped_before = session_worker.log_tail(lines=100000).count("subscription tick skipped")
    tick.apply_async(queue="purser.default")
    deadline = time.monotonic() + 60
    while session_worker.log_tail(lines=100000).count("subscription tick skipped") == skipped_before:
        assert time.monotonic() < deadline, "the worker never ran the tick"
        time.sleep(0.2)
    assert db.jobs.count_documents({"type": "renew"}) == 0
    assert redis.get(LOCK_KEY) == b"other-tick", "a skipped tick must not release another tick's lock"

    redis.delete(LOCK_KEY)
    tick.apply_async(queue="purser.default")
    renewal = wait_jobs(db, [_renewal_id(sub)], timeout=60)[_renewal_id(sub)]
    assert renewal["status"] == "settled"
    assert db.subscriptions.find_one({"_id": sub["_id"]})["renewals"] == 1
    deadline = time.monotonic() + 30
    while redis.get(LOCK_KEY) is not None:  # released when the tick finished
        assert time.monotonic() < deadline, "the tick kept its lock"
        time.sleep(0.1)
    assert balances(db, [fan])[fan] == 90
    assert_money_invariants(db)


def test_premium_content_is_unlocked_for_an_active_subscriber_and_locked_after_expiry(app_client, fresh_db):
    db = fresh_db
    from tests.support.env import TEST_WEBHOOK_SECRET

    fan, creator, stranger = app_client.register(), app_client.register(), app_client.register()
    _plan(db, creator["userId"])
    content_id = new_id()
    db.contents.insert_one({"_id": content_id, "creatorId": creator["userId"], "title": "backstage",
                            "price": 500, "isActive": True, "createdAt": utcnow()})

    def unlocked(user):
        r = app_client.request("GET", f"/api/premium/content/{content_id}", token=user["token"])
        assert r.status == 200, r
        return r.json["unlocked"]

    assert unlocked(fan) is False and unlocked(creator) is True
    r = app_client.topup(TEST_WEBHOOK_SECRET, fan["userId"], 2000)
    assert app_client.wait_job(fan["token"], r.json["jobId"])["status"] == "settled"
    r = app_client.money("/api/subscription/subscribe", fan["token"], {"creatorId": creator["userId"]})
    assert r.status == 202, r
    job = app_client.wait_job(fan["token"], r.json["jobId"])
    assert job["status"] == "settled", job
    assert unlocked(fan) is True and unlocked(stranger) is False

    r = app_client.request("POST", "/api/subscription/cancel", token=fan["token"],
                           json_body={"subscriptionId": job["jobId"]})
    assert r.status == 200 and r.json["autoRenew"] is False, r
    assert unlocked(fan) is True  # paid until expiresAt
    sub = db.subscriptions.find_one({"_id": job["jobId"]})
    assert _tick(db, sub["expiresAt"]).expired == 1
    assert unlocked(fan) is False
    assert app_client.balance(fan["token"]) == 2000 - PRICE
    assert_money_invariants(db)
