"""Payouts by state (the stuck ones first) and "ask the provider" for one."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import g, request

from api.app_settings import settings
from api.console import forms
from api.console.blueprint import actor, bp, done, page
from api.console.lookup import checked_id
from api.errors import ApiError
from api.money import ringer
from api.routes.common import bad_cursor
from ledger.states import PayoutStatus
from ledger.timeutil import utcnow
from services import desk, operator_audit, payouts
from services.payout_provider import ProviderUnavailable, from_url
from services.queries import BadCursor
from services.store import process_db

PAGE = 50


@bp.route("/payouts", methods=["GET"])
def payout_list() -> Any:
    try:
        status = PayoutStatus(request.args.get("status", PayoutStatus.SUBMITTED))
    except ValueError:
        raise ApiError(422, "VALIDATION_FAILED", "status: one of " + ", ".join(PayoutStatus)) from None
    try:
        docs, next_cursor = payouts.payouts_by_status(process_db(), status, PAGE, request.args.get("cursor") or None)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    stuck_before = utcnow() - timedelta(seconds=settings().payout_resolve_after_seconds)
    return page("payouts.html", status=status, statuses=list(PayoutStatus), payouts=docs,
                next_cursor=next_cursor, stuck_before=stuck_before)


@bp.route("/payouts/<payout_id>", methods=["GET"])
def payout(payout_id: str) -> Any:
    doc = payouts.get_payout(process_db(), checked_id(payout_id))
    if doc is None:
        raise ApiError(404, "PAYOUT_NOT_FOUND", "No such payout.")
    return page("payout.html", payout=doc, open=doc["status"] in (PayoutStatus.PENDING, PayoutStatus.SUBMITTED),
                trail=desk.operator_trail(process_db(), payout_id))


@bp.route("/payouts/<payout_id>/ask", methods=["POST"])
def ask_provider(payout_id: str) -> Any:
    s = settings()
    try:
        asked = payouts.ask_provider(process_db(), checked_id(payout_id), from_url(s.payout_provider_url), actor(),
                                     g.request_id, partitions=s.ledger_partitions, ring=ringer(),
                                     submission=forms.submission())
    except operator_audit.AlreadyDone:
        return done("console.payout", "already", payout_id=payout_id)
    except payouts.PayoutNotOpen:
        raise ApiError(409, "PAYOUT_NOT_OPEN", "The payout is final: there is nothing to ask.") from None
    except ProviderUnavailable:
        raise ApiError(503, "PROVIDER_UNAVAILABLE", "The payout provider did not answer; nothing was recorded.",
                       headers={"Retry-After": "5"}) from None
    if asked is None:
        raise ApiError(404, "PAYOUT_NOT_FOUND", "No such payout.")
    return done("console.payout", "asked", payout_id=payout_id)
