"""Operators are audited (issue 15 item 7).

Freeze/unfreeze, role changes, plan changes and cancellations each write exactly
one sealed entry into the operators' chain (partition -1) with actor, target,
before/after and the request id; ``verify_audit`` walks that chain and reports a
tampered entry. Admin credits are jobs, audited by settlement with actor ``admin``.
"""

from __future__ import annotations

import uuid
from typing import Any

from ledger.audit import OPERATOR_CHAIN
from services.queries import audit_entry_of
from services.reconcile import verify_audit
from tests.api.helpers import UNKNOWN_ID, Api, User, assert_problem


def _send(api: Api, method: str, path: str, user: User, body: Any = None,
          key: str | None = None) -> tuple[Any, str]:
    rid = f"op-{uuid.uuid4().hex}"
    r = api.client.request(method, path, json_body=body, token=user.token, headers={"X-Request-ID": rid}, key=key)
    return r, rid


def _entries(api: Api) -> list[dict[str, Any]]:
    return list(api.db.auditlogs.find({"partition": OPERATOR_CHAIN}).sort("seq", 1))


def _only_new(api: Api, seen: int) -> dict[str, Any]:
    entries = _entries(api)
    assert len(entries) == seen + 1, entries[seen:]
    entry = entries[-1]
    assert entry["seq"] == seen + 1 and entry["kind"] == "operator"
    head = api.db.partitions.find_one({"_id": OPERATOR_CHAIN})
    assert (head["auditSeq"], head["auditHead"]) == (entry["seq"], entry["hash"])
    return entry


def _check(entry: dict[str, Any], action: str, actor: dict[str, str], target: dict[str, str],
           before: Any, after: Any, rid: str) -> None:
    assert entry["action"] == action
    assert entry["actor"] == actor
    assert entry["target"] == target
    assert entry["before"] == before
    assert entry["after"] == after
    assert entry["requestId"] == rid
    assert entry["createdAt"]


def _verify_ok(api: Api) -> None:
    report = verify_audit(api.db)
    assert report.ok, report.as_dict()
    entries = _entries(api)
    if entries:
        assert report.partitions[OPERATOR_CHAIN].checked == len(entries)
    else:  # no operator action yet: no head, no chain
        assert OPERATOR_CHAIN not in report.partitions


def test_freeze_and_unfreeze_are_audited(api):
    admin, alice = api.user("admin"), api.user()
    actor = {"type": "admin", "id": admin.id}
    target = {"type": "wallet", "id": alice.id}

    r, rid = _send(api, "POST", f"/api/admin/wallets/{alice.id}/freeze", admin)
    assert r.status == 200, r
    _check(_only_new(api, 0), "wallet.freeze", actor, target, {"status": "active"}, {"status": "frozen"}, rid)

    r, rid = _send(api, "POST", f"/api/admin/wallets/{alice.id}/unfreeze", admin)
    assert r.status == 200, r
    _check(_only_new(api, 1), "wallet.unfreeze", actor, target, {"status": "frozen"}, {"status": "active"}, rid)

    # No such wallet: nothing changed, nothing recorded.
    r, _ = _send(api, "POST", f"/api/admin/wallets/{UNKNOWN_ID}/freeze", admin)
    assert_problem(r, 404, "USER_NOT_FOUND")
    assert len(_entries(api)) == 2
    _verify_ok(api)


def test_role_change_is_audited(api):
    admin, bob = api.user("admin"), api.user()
    r, rid = _send(api, "PATCH", f"/api/admin/users/{bob.id}", admin, {"role": "creator"})
    assert r.status == 200 and r.json["role"] == "creator", r
    _check(_only_new(api, 0), "user.role", {"type": "admin", "id": admin.id}, {"type": "user", "id": bob.id},
           {"role": "free"}, {"role": "creator"}, rid)
    assert api.db.users.find_one({"_id": bob.id})["role"] == "creator"

    r, _ = _send(api, "PATCH", f"/api/admin/users/{UNKNOWN_ID}", admin, {"role": "creator"})
    assert_problem(r, 404, "USER_NOT_FOUND")
    assert len(_entries(api)) == 1
    _verify_ok(api)


def test_plan_changes_are_audited(api):
    creator = api.user("creator")
    actor, target = {"type": "user", "id": creator.id}, {"type": "plan", "id": creator.id}

    r, rid = _send(api, "PUT", "/api/subscription/plan", creator, {"price": 100, "periodDays": 30})
    assert r.status == 200, r
    first = {"price": 100, "periodDays": 30, "isActive": True}
    _check(_only_new(api, 0), "plan.set", actor, target, None, first, rid)

    r, rid = _send(api, "PUT", "/api/subscription/plan", creator, {"price": 120, "periodDays": 7})
    assert r.status == 200, r
    _check(_only_new(api, 1), "plan.set", actor, target, first, {"price": 120, "periodDays": 7, "isActive": True},
           rid)
    assert api.db.plans.find_one({"_id": creator.id})["price"] == 120

    # A refused change (wrong role) records nothing.
    fan = api.user()
    r, _ = _send(api, "PUT", "/api/subscription/plan", fan, {"price": 100, "periodDays": 30})
    assert_problem(r, 403, "FORBIDDEN")
    assert len(_entries(api)) == 2
    _verify_ok(api)


def test_cancellation_is_audited(api):
    creator, fan = api.user("creator"), api.user()
    api.send("PUT", "/api/subscription/plan", creator, {"price": 20, "periodDays": 30})
    api.fund(fan, 20)
    job = api.expect_settled(fan, api.money("/api/subscription/subscribe", fan, {"creatorId": creator.id}))
    sub_id = job["result"]["subscriptionId"]
    seen = len(_entries(api))  # the plan

    r, _ = _send(api, "POST", "/api/subscription/cancel", creator, {"subscriptionId": sub_id})
    assert_problem(r, 404, "SUBSCRIPTION_NOT_FOUND")
    assert len(_entries(api)) == seen

    r, rid = _send(api, "POST", "/api/subscription/cancel", fan, {"subscriptionId": sub_id})
    assert r.status == 200 and r.json["autoRenew"] is False, r
    entry = _only_new(api, seen)
    stored = api.db.subscriptions.find_one({"_id": sub_id})
    assert entry["after"]["cancelledAt"] == stored["cancelledAt"]
    _check(entry, "subscription.cancel", {"type": "user", "id": fan.id}, {"type": "subscription", "id": sub_id},
           {"autoRenew": True, "cancelledAt": None}, {"autoRenew": False, "cancelledAt": stored["cancelledAt"]},
           rid)
    _verify_ok(api)


def test_tampered_operator_entry_fails_verify_audit(api):
    admin, alice = api.user("admin"), api.user()
    for action in ("freeze", "unfreeze", "freeze"):
        assert api.send("POST", f"/api/admin/wallets/{alice.id}/{action}", admin).status == 200
    _verify_ok(api)

    # Rewriting history: the second entry now claims the wallet was never frozen.
    api.db.auditlogs.update_one({"partition": OPERATOR_CHAIN, "seq": 2}, {"$set": {"before.status": "active"}})
    report = verify_audit(api.db)
    assert not report.ok
    chain = report.partitions[OPERATOR_CHAIN]
    assert (chain.ok, chain.broken_at) == (False, 2), report.as_dict()
    assert report.as_dict()["partitions"]["-1"]["ok"] is False


def test_removed_operator_head_fails_verify_audit(api):
    admin, alice = api.user("admin"), api.user()
    assert api.send("POST", f"/api/admin/wallets/{alice.id}/freeze", admin).status == 200
    api.db.partitions.delete_one({"_id": OPERATOR_CHAIN})
    report = verify_audit(api.db)
    assert not report.ok and not report.partitions[OPERATOR_CHAIN].ok, report.as_dict()


def test_admin_credit_is_audited_by_settlement_with_admin_actor(api):
    admin, user = api.user("admin"), api.user()
    r, rid = _send(api, "POST", "/api/admin/credit", admin, {"userId": user.id, "amount": 50, "reason": "goodwill"},
                   key=str(uuid.uuid4()))
    assert r.status == 202, r
    job = api.expect_settled(admin, r)
    found = audit_entry_of(api.db, job["jobId"])
    assert found is not None
    entry, record = found
    assert entry["partition"] != OPERATOR_CHAIN
    assert record["actor"] == {"type": "admin", "id": admin.id}
    assert record["type"] == "credit" and record["outcome"] == "settled"
    assert record["requestId"] == rid
    assert _entries(api) == []  # a job, not an operator-chain entry
    _verify_ok(api)
