"""Creator plans and fan subscriptions."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify

from api.auth import current
from api.errors import ApiError
from api.jsonbody import parse_body
from api.money import accept
from api.request_schemas import CancelIn, PlanIn, SubscribeIn
from api.response_schemas import JobOut, PlanOut, SubscriptionOut, SubscriptionPage
from api.routes.common import refuse_self, require_user_wallet
from api.spec import Link, endpoint
from ledger.operations import Subscribe
from ledger.states import Role
from services import operator_audit, subscriptions
from services.queries import subscription_view
from services.store import process_db

bp = Blueprint("subscription", __name__, url_prefix="/api/subscription")


@endpoint(bp, "PUT", "/plan", summary="Set the caller's subscription plan (price per period)",
          body=PlanIn, response=PlanOut, roles=(Role.CREATOR, Role.ADMIN))
def put_plan() -> Any:
    body = parse_body(PlanIn)
    principal = current()
    fields = subscriptions.set_plan(process_db(), principal.user_id, body.price, body.periodDays,
                                    operator_audit.actor_of(principal.user_id, principal.role), g.request_id)
    return jsonify(creatorId=principal.user_id, **fields)


@endpoint(bp, "POST", "/subscribe", summary="Subscribe to a creator (first period charged asynchronously)",
          body=SubscribeIn, response=JobOut, status=202, idempotent=True,
          errors={422: ("SELF_TRANSFER", "RECEIVER_NOT_FOUND", "NO_PLAN")})
def subscribe(idempotency_key: str | None) -> Any:
    body = parse_body(SubscribeIn)
    me = current().user_id
    refuse_self(me, body.creatorId)
    require_user_wallet(body.creatorId)
    if not subscriptions.offers_plan(process_db(), body.creatorId):
        raise ApiError(422, "NO_PLAN", "This creator offers no subscription plan.")
    return accept(Subscribe(me, body.creatorId, body.autoRenew), body, owner_id=me, key=idempotency_key)


@endpoint(bp, "POST", "/cancel", summary="Stop auto-renewal; access lasts until expiresAt",
          body=CancelIn, response=SubscriptionOut, errors={404: "SUBSCRIPTION_NOT_FOUND"})
def cancel() -> Any:
    body = parse_body(CancelIn)
    principal = current()
    sub = subscriptions.cancel(process_db(), body.subscriptionId, principal.user_id,
                               operator_audit.actor_of(principal.user_id, principal.role), g.request_id)
    if sub is None:
        raise ApiError(404, "SUBSCRIPTION_NOT_FOUND", "No active subscription with this id.")
    return jsonify(subscription_view(sub))


@endpoint(bp, "GET", "", summary="The caller's subscriptions", response=SubscriptionPage,
          links={"Cancel": Link("subscription.cancel", "Stop the first subscription's auto-renewal",
                                body={"subscriptionId": "$response.body#/items/0/subscriptionId"})})
def list_subscriptions() -> Any:
    found = subscriptions.subscriptions_of(process_db(), current().user_id)
    return jsonify(items=[subscription_view(s) for s in found])
