"""Money over time: balances as of an instant, monthly statements (JSON or CSV), the platform report."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.app_settings import settings
from api.auth import current
from api.errors import ApiError
from api.jsonbody import parse_query
from api.request_schemas import BalanceQuery
from api.response_schemas import BalanceOut, PlatformReportOut, StatementList, StatementOut
from api.spec import endpoint
from ledger.money import is_user_id
from ledger.periods import Month, parse_instant, parse_month
from ledger.states import Role
from ledger.timeutil import iso, utcnow
from services import checkpoints, reports, statements, wallets
from services.store import process_db

bp = Blueprint("statements", __name__, url_prefix="/api/statements")
admin_bp = Blueprint("admin_history", __name__, url_prefix="/api/admin")
ADMIN = (Role.ADMIN,)
CSV = "text/csv"


def _margin() -> timedelta:
    return timedelta(seconds=settings().history_margin_seconds)


def as_of_answer(user_id: str, text: str) -> dict[str, Any]:
    """The balance, held and debt of ``user_id``'s wallet at the instant ``text`` names (422s)."""
    try:
        at = parse_instant(text)
    except ValueError:
        raise ApiError(422, "INSTANT_INVALID", "asOf must be an RFC 3339 date-time with an offset, "
                                               "e.g. 2026-11-30T23:59:59.999Z.") from None
    if at > utcnow():
        raise ApiError(422, "INSTANT_IN_FUTURE", "asOf is later than now: no balance is known yet.")
    created, status = wallets.wallet_created(process_db(), user_id)
    if status is None:
        raise ApiError(404, "NOT_FOUND", "No wallet for this account.")
    if created is not None and at < created:
        raise ApiError(422, "INSTANT_BEFORE_WALLET", "The wallet did not exist at that instant.")
    found = checkpoints.balance_at(process_db(), user_id, at)
    return {"walletId": user_id, "userId": user_id, "asOf": iso(found.at), "balance": found.balance,
            "incoming": 0, "held": found.held, "debt": found.debt, "currency": "COIN", "status": status}


def month_arg(period: str) -> Month:
    try:
        month = parse_month(period)
    except ValueError:
        raise ApiError(422, "PERIOD_INVALID", "The period must be a month, YYYY-MM.") from None
    if month.start > utcnow():
        raise ApiError(422, "PERIOD_IN_FUTURE", "That month has not started.")
    return month


def statement_answer(user_id: str, period: str) -> Any:
    """The statement as JSON, or CSV when the client asks for ``text/csv``."""
    month = month_arg(period)
    try:
        body = statements.get(process_db(), user_id, month, utcnow(), settle_margin=_margin())
    except statements.BeforeWallet:
        raise ApiError(422, "PERIOD_BEFORE_WALLET", "The wallet did not exist in that month.") from None
    if request.accept_mimetypes.best_match(["application/json", CSV]) == CSV:
        return Response(statements.csv_text(body), mimetype=CSV,
                        headers={"Content-Disposition": f'attachment; filename="statement-{period}.csv"'})
    return jsonify(body)


@endpoint(bp, "GET", "", summary="The caller's monthly statements, newest first (the current one provisional)",
          response=StatementList)
def list_statements() -> Any:
    return jsonify(items=statements.periods(process_db(), current().user_id, utcnow()))


@endpoint(bp, "GET", "/<period>", summary="One month's statement (Accept: text/csv for one line per movement)",
          response=StatementOut, errors={422: ("PERIOD_INVALID", "PERIOD_IN_FUTURE", "PERIOD_BEFORE_WALLET")})
def get_statement(period: str) -> Any:
    return statement_answer(current().user_id, period)


def _user(user_id: str) -> str:
    if not is_user_id(user_id):
        raise ApiError(404, "USER_NOT_FOUND", "No such user.")
    return user_id


@endpoint(admin_bp, "GET", "/wallets/<userId>/balance", summary="Any wallet's balance as of an instant",
          query=BalanceQuery, response=BalanceOut, roles=ADMIN,
          errors={404: ("USER_NOT_FOUND", "NOT_FOUND"),
                  422: ("INSTANT_INVALID", "INSTANT_IN_FUTURE", "INSTANT_BEFORE_WALLET")})
def admin_balance(userId: str) -> Any:  # noqa: N803
    q = parse_query(BalanceQuery)
    return jsonify(as_of_answer(_user(userId), q.asOf or iso(utcnow())))


@endpoint(admin_bp, "GET", "/wallets/<userId>/statements/<period>", summary="Any wallet's monthly statement",
          response=StatementOut, roles=ADMIN,
          errors={404: "USER_NOT_FOUND", 422: ("PERIOD_INVALID", "PERIOD_IN_FUTURE", "PERIOD_BEFORE_WALLET")})
def admin_statement(userId: str, period: str) -> Any:  # noqa: N803
    return statement_answer(_user(userId), period)


@endpoint(admin_bp, "GET", "/reports/<period>", summary="The platform's monthly report with its tie-out",
          response=PlatformReportOut, roles=ADMIN, errors={422: ("PERIOD_INVALID", "PERIOD_IN_FUTURE")})
def platform_report(period: str) -> Any:
    month = month_arg(period)
    return jsonify(reports.platform_month(process_db(), month, utcnow(), settle_margin=_margin()))
