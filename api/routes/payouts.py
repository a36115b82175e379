"""Payouts to the bank: request one (the hold is settled as a job), list and read them.

The payout's id is the id of the ``payout`` job that places the hold; submission
to the provider and its answers happen after settlement (tasks/payouts.py, the
provider events on ``POST /api/payments/events``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.app_settings import settings
from api.auth import current, still_admin
from api.errors import ApiError
from api.jsonbody import parse_body, parse_query
from api.money import accept
from api.request_schemas import PageQuery, PayoutIn, ScheduleIn
from api.response_schemas import JobOut, PayoutOut, PayoutPage, ScheduleOut
from api.routes.common import bad_cursor
from api.spec import Link, endpoint
from ledger.money import is_user_id
from ledger.operations import Payout
from ledger.periods import BadSchedule
from ledger.timeutil import utcnow
from services import payout_schedules
from services.jobs import new_job_id
from services.payouts import get_payout as load_payout
from services.payouts import payout_view, user_payouts
from services.queries import BadCursor
from services.store import process_db

bp = Blueprint("payouts", __name__, url_prefix="/api/payouts")


@endpoint(bp, "POST", "", summary="Request a payout to the bank: the amount is held, then paid or released",
          body=PayoutIn, response=JobOut, status=202, idempotent=True,
          errors={403: "PAYOUT_NOT_ALLOWED", 422: "PAYOUT_BELOW_MINIMUM"})
def request_payout(idempotency_key: str | None) -> Any:
    principal = current()
    s = settings()
    if principal.role not in s.payout_roles:
        raise ApiError(403, "PAYOUT_NOT_ALLOWED", "Your role cannot request payouts.")
    body = parse_body(PayoutIn)
    if body.amount < s.payout_min_amount:
        raise ApiError(422, "PAYOUT_BELOW_MINIMUM",
                       f"A payout must be at least {s.payout_min_amount} coins.")
    job_id = new_job_id()  # the payout's id: the provider's idempotency key for it
    return accept(Payout(principal.user_id, body.amount, job_id), body, owner_id=principal.user_id,
                  key=idempotency_key, job_id=job_id)


@endpoint(bp, "GET", "", summary="The caller's payouts, newest first", query=PageQuery, response=PayoutPage,
          links={"GetPayout": Link("payouts.get_payout", "The first payout of the page",
                                   parameters={"payoutId": "$response.body#/items/0/payoutId"})})
def list_payouts() -> Any:
    q = parse_query(PageQuery)
    try:
        docs, next_cursor = user_payouts(process_db(), current().user_id, q.limit, q.cursor)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    return jsonify(items=[payout_view(d) for d in docs], nextCursor=next_cursor)


def _schedule_roles() -> None:
    if current().role not in settings().payout_roles:
        raise ApiError(403, "PAYOUT_NOT_ALLOWED", "Your role cannot request payouts.")


@endpoint(bp, "PUT", "/schedule", summary="Pay out the whole spendable balance on a schedule (daily, weekly, "
          "monthly), when it reaches the minimum", body=ScheduleIn, response=ScheduleOut,
          errors={403: "PAYOUT_NOT_ALLOWED", 422: ("PAYOUT_BELOW_MINIMUM", "SCHEDULE_ANCHOR_INVALID")})
def put_schedule() -> Any:
    _schedule_roles()
    body = parse_body(ScheduleIn)
    floor = settings().payout_min_amount
    if body.minimum < floor:
        raise ApiError(422, "PAYOUT_BELOW_MINIMUM", f"The minimum must be at least {floor} coins.")
    try:
        doc = payout_schedules.put_schedule(process_db(), current().user_id, body.interval, body.anchor, body.minimum,
                                            utcnow())
    except BadSchedule as exc:
        raise ApiError(422, "SCHEDULE_ANCHOR_INVALID", str(exc)) from None
    return jsonify(payout_schedules.schedule_view(doc))


@endpoint(bp, "GET", "/schedule", summary="The caller's payout schedule and what its last slots did",
          response=ScheduleOut, errors={404: "SCHEDULE_NOT_FOUND"})
def get_schedule() -> Any:
    me = current().user_id
    doc = payout_schedules.get_schedule(process_db(), me)
    if doc is None:
        raise ApiError(404, "SCHEDULE_NOT_FOUND", "No active payout schedule.")
    return jsonify({**payout_schedules.schedule_view(doc), "runs": payout_schedules.runs(process_db(), me)})


@endpoint(bp, "DELETE", "/schedule", summary="Stop the caller's payout schedule (a slot already placed still pays)",
          status=204, errors={404: "SCHEDULE_NOT_FOUND"})
def delete_schedule() -> Any:
    if not payout_schedules.delete_schedule(process_db(), current().user_id, utcnow()):
        raise ApiError(404, "SCHEDULE_NOT_FOUND", "No active payout schedule.")
    return "", 204


@endpoint(bp, "GET", "/<payoutId>", summary="One payout (its owner's, or any for an admin)", response=PayoutOut,
          errors={404: "PAYOUT_NOT_FOUND"})
def get_payout(payoutId: str) -> Any:  # noqa: N803
    principal = current()
    doc = load_payout(process_db(), payoutId) if is_user_id(payoutId) else None
    # 404, not 403, for other people's payouts: existence is not disclosed.
    if doc is None or (doc["userId"] != principal.user_id and not still_admin(principal)):
        raise ApiError(404, "PAYOUT_NOT_FOUND", "No such payout.")
    return jsonify(payout_view(doc))
