"""Balance, history and peer transfers."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from api.auth import current
from api.errors import ApiError
from api.jsonbody import parse_body, parse_query
from api.money import accept
from api.routes.common import bad_cursor, refuse_self, require_user_wallet
from api.schemas import BalanceOut, JobOut, PageQuery, TransferIn, TxPage
from api.spec import endpoint
from infra.mongo import get_db
from ledger.operations import Transfer
from services.payouts import held_amount
from services.queries import BadCursor, incoming_credits, wallet_history

bp = Blueprint("wallet", __name__, url_prefix="/api/wallet")


@endpoint(bp, "GET", "/balance", summary="The caller's balance", response=BalanceOut)
def balance() -> Any:
    me = current().user_id
    wallet = get_db().wallets.find_one({"_id": me})
    if wallet is None:
        raise ApiError(404, "NOT_FOUND", "No wallet for this account.")
    # ``balance`` is spendable now; ``incoming`` was settled for this wallet by another
    # partition's batch and becomes spendable when the owner applies it (sub-second).
    incoming = incoming_credits(get_db(), me, current_app.config["PURSER"].ledger_partitions)
    return jsonify(walletId=wallet["_id"], userId=me, balance=wallet["balance"], incoming=incoming,
                   held=held_amount(me), currency="COIN", status=wallet.get("status", "active"))


@endpoint(bp, "GET", "/transactions", summary="The caller's ledger history, newest first",
          query=PageQuery, response=TxPage)
def transactions() -> Any:
    q = parse_query(PageQuery)
    try:
        items, next_cursor = wallet_history(get_db(), current().user_id, q.limit, q.cursor)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    return jsonify(items=items, nextCursor=next_cursor)


@endpoint(bp, "POST", "/transfer", summary="Send coins to another user (settled asynchronously)",
          body=TransferIn, response=JobOut, status=202, idempotent=True)
def transfer() -> Any:
    body = parse_body(TransferIn)
    me = current().user_id
    refuse_self(me, body.receiverId)
    require_user_wallet(body.receiverId)
    return accept(Transfer(me, body.receiverId, body.amount, body.note), body, owner_id=me)
