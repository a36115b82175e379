"""Issue 17, item 4: the audit actor of every kind of job, read from the real audit log.

``user`` is asserted in ``test_settle_engine.py``; here the other three: ``provider``
(a signed top-up webhook), ``admin`` (an admin credit and an admin refund, both over
the API) and ``system`` (a renewal created by beat's subscription tick, run by the real
housekeeping worker from the message beat publishes). Each entry is read back through
``services.queries.audit_entry_of`` (the job's pointer into its partition's chain).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pymongo.database import Database

from ledger.timeutil import utcnow
from services.queries import audit_entry_of
from tests.support.client import ApiClient
from tests.support.invariants import assert_money_invariants
from tests.support.seeding import User, seed_users
from tests.support.waiting import wait_drained, wait_for


def _settled(client: ApiClient, who: User, r: Any) -> str:
    assert r.status == 202, r
    job = client.wait_job(who, r.json["jobId"], timeout=60)
    assert job["status"] == "settled", job
    return job["jobId"]


def _record(db: Database, job_id: str) -> dict[str, Any]:
    found = audit_entry_of(db, job_id)
    assert found is not None, f"no audit entry for job {job_id}"
    entry, record = found
    assert record["jobId"] == job_id and record["outcome"] == "settled", record
    return record


def test_provider_admin_and_system_actors_are_audited(db: Database, app_client: ApiClient) -> None:
    client = app_client
    (admin,) = seed_users(db, 1, role="admin", prefix="admin")
    (creator,) = seed_users(db, 1, role="creator", prefix="creator")
    (fan,) = seed_users(db, 1, role="free", prefix="fan")

    # provider: the payment provider's signed webhook tops the fan up.
    topup = _settled(client, fan, client.webhook(fan.id, 1000))
    assert _record(db, topup)["actor"] == {"type": "provider", "id": fan.id}

    # admin: a goodwill credit, then a refund of a transfer the fan made (both by the admin).
    credit = _settled(client, admin, client.money("/api/admin/credit", admin,
                                                  {"userId": creator.id, "amount": 50, "reason": "goodwill"}))
    record = _record(db, credit)
    assert record["actor"] == {"type": "admin", "id": admin.id}, record
    assert record["reason"] == "goodwill", record
    transfer = _settled(client, fan, client.money("/api/wallet/transfer", fan,
                                                  {"receiverId": creator.id, "amount": 100}))
    assert _record(db, transfer)["actor"] == {"type": "user", "id": fan.id}
    refund = _settled(client, admin, client.money("/api/admin/refunds", admin,
                                                  {"jobId": transfer, "amount": 40,
                                                   "reason": "requested_by_customer"}))
    record = _record(db, refund)
    assert record["actor"] == {"type": "admin", "id": admin.id}, record
    assert record["reason"] == "requested_by_customer", record

    # system: the fan subscribes (user), the period ends, beat's tick renews it.
    r = client.request("PUT", "/api/subscription/plan", json_body={"price": 100, "periodDays": 30},
                       token=creator)
    assert r.status == 200, r
    subscribe = _settled(client, fan, client.money("/api/subscription/subscribe", fan,
                                                   {"creatorId": creator.id}))
    assert _record(db, subscribe)["actor"] == {"type": "user", "id": fan.id}
    # The period ends now (instead of in 30 days): the stored date is what the tick reads.
    ended = utcnow().replace(microsecond=0) - timedelta(seconds=1)
    assert db.subscriptions.update_one({"_id": subscribe}, {"$set": {"expiresAt": ended}}).modified_count == 1

    from services.subscriptions import renewal_job_id, renewal_key
    from workers.celery_app import get_celery

    # The message beat publishes for its "subscriptions-tick" entry, consumed by the
    # session's housekeeping worker; the tick inserts the renewal, the ledger worker settles it.
    get_celery().send_task("subscriptions.tick", expires=60)
    renewal = renewal_job_id(renewal_key(subscribe, ended))
    wait_for(lambda: db.jobs.find_one({"_id": renewal, "status": "settled"}), timeout=60,
             what=f"the renewal {renewal} settled")
    record = _record(db, renewal)
    # A renewal is nobody's request: the actor is the system, acting on the subscriber's job.
    assert record["actor"] == {"type": "system", "id": fan.id}, record
    assert record["type"] == "renew", record

    wait_drained(db, timeout=30)
    # 1000 in, 100 out, 40 back, 100 + 100 for two periods of the subscription.
    assert client.balance(fan) == 1000 - 100 + 40 - 200
    assert_money_invariants(db)
