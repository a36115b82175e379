"""Finding things and acting on them: search, a wallet (freeze), a job (refund)."""

from __future__ import annotations

import json
from typing import Any

from flask import g, request
from pydantic import ValidationError

from api.app_settings import settings
from api.console import forms
from api.console.blueprint import actor, bp, done, page
from api.errors import ApiError
from api.money import admit
from api.request_schemas import RefundIn
from api.routes.admin import refund_operation
from api.routes.common import bad_cursor
from ledger.money import is_user_id
from ledger.money_out import REFUNDABLE
from ledger.states import JobStatus, WalletStatus
from services import accounts, desk, operator_audit, refunds, search, webhook_log
from services.jobs import Outcome, get_job, job_view
from services.queries import BadCursor, user_jobs, wallet_history
from services.store import process_db

PAGE = 20
REFUND_REASONS = ("requested_by_customer", "duplicate", "fraudulent")


def checked_id(value: str) -> str:
    """An id from the path, or the 404 any unknown thing gets."""
    if not is_user_id(value):
        raise ApiError(404, "NOT_FOUND", "No such resource.")
    return value


@bp.route("/search", methods=["GET"])
def find() -> Any:
    query = request.args.get("q", "")
    return page("search.html", query=query, hits=search.search(process_db(), query) if query.strip() else None)


@bp.route("/wallets/<user_id>", methods=["GET"])
def wallet(user_id: str) -> Any:
    card = desk.wallet_card(process_db(), checked_id(user_id), settings().ledger_partitions)
    if card is None:
        raise ApiError(404, "USER_NOT_FOUND", "No such user.")
    try:
        entries, next_cursor = wallet_history(process_db(), user_id, PAGE, request.args.get("cursor") or None)
        jobs, _ = user_jobs(process_db(), user_id, None, PAGE, None)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    return page("wallet.html", card=card, entries=entries, next_cursor=next_cursor, jobs=jobs,
                trail=desk.audit_trail(process_db(), [e["jobId"] for e in entries], user_id),
                operator_trail=desk.operator_trail(process_db(), user_id))


def _set_status(user_id: str, status: WalletStatus, notice: str) -> Any:
    try:
        changed = accounts.set_wallet_status(process_db(), checked_id(user_id), status, actor(), g.request_id,
                                             submission=forms.submission())
    except operator_audit.AlreadyDone:
        return done("console.wallet", "already", user_id=user_id)
    if changed is None:
        raise ApiError(404, "USER_NOT_FOUND", "No such user.")
    return done("console.wallet", notice, user_id=user_id)


@bp.route("/wallets/<user_id>/freeze", methods=["POST"])
def freeze(user_id: str) -> Any:
    return _set_status(user_id, WalletStatus.FROZEN, "frozen")


@bp.route("/wallets/<user_id>/unfreeze", methods=["POST"])
def unfreeze(user_id: str) -> Any:
    return _set_status(user_id, WalletStatus.ACTIVE, "unfrozen")


@bp.route("/jobs/<job_id>", methods=["GET"])
def job(job_id: str) -> Any:
    doc = get_job(process_db(), checked_id(job_id))
    if doc is None:
        raise ApiError(404, "JOB_NOT_FOUND", "No such job.")
    view = refunds.with_refunds(process_db(), job_view(doc))
    refundable = doc["type"] in REFUNDABLE and doc["status"] == JobStatus.SETTLED
    return page("job.html", job=doc, view=view, params=doc.get("params") or {},
                split=(doc.get("result") or {}).get("split"), audit=desk.audit_record(process_db(), job_id),
                deliveries=webhook_log.deliveries_of_job(process_db(), job_id), refundable=refundable,
                reasons=REFUND_REASONS)


def _refund_body(job_id: str) -> RefundIn:
    try:
        return RefundIn.model_validate({"jobId": job_id, "amount": forms.optional_amount(),
                                        "reason": request.form.get("reason", "")})
    except ValidationError as exc:
        first = exc.errors()[0]
        raise forms.invalid(".".join(str(p) for p in first["loc"]), first["msg"]) from None


@bp.route("/jobs/<job_id>/refund", methods=["POST"])
def refund(job_id: str) -> Any:
    body = _refund_body(checked_id(job_id))
    key = operator_audit.FORM_KEY_PREFIX + forms.form_key()
    result = admit(refund_operation(body), body, owner_id=g.console.user_id, key=key)
    if result.outcome == Outcome.ACCEPTED and result.job is not None:
        return done("console.job", "refund", job_id=result.job["_id"])
    assert result.response is not None  # replayed: the first submission's job
    return done("console.job", "already", job_id=json.loads(result.response.body)["jobId"])
