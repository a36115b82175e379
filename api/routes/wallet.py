"""Balance, history and peer transfers."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.app_settings import settings
from api.auth import current
from api.errors import ApiError
from api.jsonbody import parse_body, parse_query
from api.money import accept
from api.request_schemas import BalanceQuery, PageQuery, TransferIn
from api.response_schemas import BalanceOut, JobOut, TxPage
from api.routes.common import bad_cursor, refuse_self, require_user_wallet
from api.routes.statements import as_of_answer
from api.spec import endpoint
from ledger.operations import Transfer
from services import wallets
from services.payouts import held_amount
from services.queries import BadCursor, wallet_history
from services.store import process_db

bp = Blueprint("wallet", __name__, url_prefix="/api/wallet")


@endpoint(bp, "GET", "/balance", summary="The caller's balance, now or as of an instant (?asOf=)", response=BalanceOut,
          query=BalanceQuery,
          errors={404: "NOT_FOUND", 422: ("INSTANT_INVALID", "INSTANT_IN_FUTURE", "INSTANT_BEFORE_WALLET"),
                  503: "SERVICE_UNAVAILABLE"})
def balance() -> Any:
    me = current().user_id
    as_of = parse_query(BalanceQuery).asOf
    if as_of is not None:
        return jsonify(as_of_answer(me, as_of))
    try:
        found = wallets.balance(process_db(), me, settings().ledger_partitions)
    except wallets.ConsistentReadError:
        raise ApiError(503, "SERVICE_UNAVAILABLE", "The wallet is changing; retry shortly.",
                       headers={"Retry-After": "1"}) from None
    if found is None:
        raise ApiError(404, "NOT_FOUND", "No wallet for this account.")
    # ``balance`` is spendable now; ``incoming`` was settled for this wallet by another
    # partition's batch and becomes spendable when the owner applies it (sub-second).
    return jsonify(walletId=found.wallet_id, userId=me, balance=found.balance, incoming=found.incoming,
                   held=held_amount(process_db(), me), currency="COIN", status=found.status)


@endpoint(bp, "GET", "/transactions", summary="The caller's ledger history, newest first",
          query=PageQuery, response=TxPage)
def transactions() -> Any:
    q = parse_query(PageQuery)
    try:
        items, next_cursor = wallet_history(process_db(), current().user_id, q.limit, q.cursor)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    return jsonify(items=items, nextCursor=next_cursor)


@endpoint(bp, "POST", "/transfer", summary="Send coins to another user (settled asynchronously)",
          body=TransferIn, response=JobOut, status=202, idempotent=True,
          errors={422: ("SELF_TRANSFER", "RECEIVER_NOT_FOUND")})
def transfer(idempotency_key: str | None) -> Any:
    body = parse_body(TransferIn)
    me = current().user_id
    refuse_self(me, body.receiverId)
    require_user_wallet(body.receiverId)
    return accept(Transfer(me, body.receiverId, body.amount, body.note), body, owner_id=me, key=idempotency_key)
