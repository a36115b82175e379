"""Creator plans and fan subscriptions."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

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
from services.queries import subscription_view

bp = Blueprint("subscription", __name__, url_prefix="/api/subscription")


@endpoint(bp, "PUT", "/plan", summary="Set the caller's subscription plan (price per period)",
          body=PlanIn, response=PlanOut, roles=("creator", "admin"))
def put_plan() -> Any:
    body = parse_body(PlanIn)
    me = current().user_id
    get_db().plans.update_one(
        {"_id": me},
        {"$set": {"price": body.price, "periodDays": body.periodDays, "isActive": True, "updatedAt": utcnow()},
         "$setOnInsert": {"createdAt": utcnow()}},
        upsert=True)
    return jsonify(creatorId=me, price=body.price, periodDays=body.periodDays, isActive=True)


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
    me = current().user_id
    res = db.subscriptions.update_one(
        {"_id": body.subscriptionId, "subscriberId": me, "status": "active"},
        {"$set": {"autoRenew": False, "cancelledAt": utcnow()}})
    if res.matched_count == 0:
        raise ApiError(404, "SUBSCRIPTION_NOT_FOUND", "No active subscription with this id.")
    return jsonify(subscription_view(db.subscriptions.find_one({"_id": body.subscriptionId})))


@endpoint(bp, "GET", "", summary="The caller's subscriptions", response=SubscriptionPage)
def list_subscriptions() -> Any:
    subs = get_db().subscriptions.find({"subscriberId": current().user_id}).sort("createdAt", -1).limit(200)
    return jsonify(items=[subscription_view(s) for s in subs])
