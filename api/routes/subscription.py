"""Creator plans and fan subscriptions."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify
from pymongo.client_session import ClientSession

from api.auth import current
from api.errors import ApiError
from api.jsonbody import parse_body
from api.money import accept
from api.routes.common import refuse_self, require_user_wallet
from api.schemas import CancelIn, JobOut, PlanIn, PlanOut, SubscribeIn, SubscriptionOut, SubscriptionPage
from api.spec import endpoint
from infra.mongo import get_db
from ledger.operations import Subscribe
from ledger.timeutil import utcnow
from services import operator_audit
from services.queries import subscription_view

bp = Blueprint("subscription", __name__, url_prefix="/api/subscription")


@endpoint(bp, "PUT", "/plan", summary="Set the caller's subscription plan (price per period)",
          body=PlanIn, response=PlanOut, roles=("creator", "admin"))
def put_plan() -> Any:
    body = parse_body(PlanIn)
    db = get_db()
    principal = current()
    me = principal.user_id
    fields = {"price": body.price, "periodDays": body.periodDays, "isActive": True}

    def apply(session: ClientSession) -> operator_audit.Change:
        now = utcnow()
        before = db.plans.find_one({"_id": me}, {"_id": 0, "price": 1, "periodDays": 1, "isActive": 1},
                                   session=session)
        db.plans.update_one({"_id": me}, {"$set": dict(fields, updatedAt=now), "$setOnInsert": {"createdAt": now}},
                            upsert=True, session=session)
        return operator_audit.Change(before, dict(fields))

    operator_audit.record(db, "plan.set", operator_audit.actor_of(me, principal.role),
                          {"type": "plan", "id": me}, g.request_id, apply)
    return jsonify(creatorId=me, **fields)


@endpoint(bp, "POST", "/subscribe", summary="Subscribe to a creator (first period charged asynchronously)",
          body=SubscribeIn, response=JobOut, status=202, idempotent=True)
def subscribe() -> Any:
    body = parse_body(SubscribeIn)
    me = current().user_id
    refuse_self(me, body.creatorId)
    require_user_wallet(body.creatorId)
    if get_db().plans.find_one({"_id": body.creatorId, "isActive": True}, {"_id": 1}) is None:
        raise ApiError(422, "NO_PLAN", "This creator offers no subscription plan.")
    return accept(Subscribe(me, body.creatorId, body.autoRenew), body, owner_id=me)


@endpoint(bp, "POST", "/cancel", summary="Stop auto-renewal; access lasts until expiresAt",
          body=CancelIn, response=SubscriptionOut, errors=(404,))
def cancel() -> Any:
    body = parse_body(CancelIn)
    db = get_db()
    principal = current()
    me = principal.user_id
    mine = {"_id": body.subscriptionId, "subscriberId": me, "status": "active"}

    def apply(session: ClientSession) -> operator_audit.Change | None:
        before = db.subscriptions.find_one(mine, {"autoRenew": 1, "cancelledAt": 1}, session=session)
        if before is None:
            return None
        after = {"autoRenew": False, "cancelledAt": utcnow()}
        db.subscriptions.update_one(mine, {"$set": after}, session=session)
        return operator_audit.Change({"autoRenew": before.get("autoRenew"), "cancelledAt": before.get("cancelledAt")},
                                     after)

    done = operator_audit.record(db, "subscription.cancel", operator_audit.actor_of(me, principal.role),
                                 {"type": "subscription", "id": body.subscriptionId}, g.request_id, apply)
    if done is None:
        raise ApiError(404, "SUBSCRIPTION_NOT_FOUND", "No active subscription with this id.")
    return jsonify(subscription_view(db.subscriptions.find_one({"_id": body.subscriptionId})))


@endpoint(bp, "GET", "", summary="The caller's subscriptions", response=SubscriptionPage)
def list_subscriptions() -> Any:
    subs = get_db().subscriptions.find({"subscriberId": current().user_id}).sort("createdAt", -1).limit(200)
    return jsonify(items=[subscription_view(s) for s in subs])
