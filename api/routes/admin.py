"""Operator actions: roles, credits, wallet freezes (each audited in the operator chain or by settlement)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify

from api import user_changes
from api.app_settings import settings
from api.auth import current
from api.errors import ApiError
from api.jsonbody import parse_body
from api.money import accept
from api.request_schemas import CreditIn, RefundIn, RoleIn
from api.response_schemas import JobOut, SystemWalletsOut, UserOut, WalletStatusOut
from api.routes.common import require_user_wallet
from api.spec import endpoint
from ledger.money import is_user_id
from ledger.operations import Credit, Refund
from ledger.states import Role, WalletStatus
from services import accounts, operator_audit, refunds, users, wallets
from services.store import process_db

bp = Blueprint("admin", __name__, url_prefix="/api/admin")
ADMIN = (Role.ADMIN,)


def _actor() -> dict[str, str]:
    me = current()
    return operator_audit.actor_of(me.user_id, me.role)


def _user_id(user_id: str) -> str:
    if not is_user_id(user_id):
        raise ApiError(404, "USER_NOT_FOUND", "No such user.")
    return user_id


@endpoint(bp, "PATCH", "/users/<userId>", summary="Change a user's role", body=RoleIn, response=UserOut,
          roles=ADMIN, errors={404: "USER_NOT_FOUND"})
def set_role(userId: str) -> Any:  # noqa: N803
    body = parse_body(RoleIn)
    user = accounts.change_role(process_db(), _user_id(userId), body.role, _actor(), g.request_id)
    if user is None:
        raise ApiError(404, "USER_NOT_FOUND", "No such user.")
    user_changes.announce(userId)  # every web process forgets the cached role now
    return jsonify(users.user_view(user))


@endpoint(bp, "POST", "/credit", summary="Credit a wallet (goodwill, corrections)", body=CreditIn,
          response=JobOut, status=202, roles=ADMIN, idempotent=True, errors={422: "RECEIVER_NOT_FOUND"})
def credit(idempotency_key: str | None) -> Any:
    body = parse_body(CreditIn)
    require_user_wallet(body.userId)
    return accept(Credit(body.userId, body.amount, body.reason), body, owner_id=current().user_id,
                  key=idempotency_key)


@endpoint(bp, "POST", "/refunds", summary="Refund (part of) a settled unlock, gift, subscription charge or transfer",
          body=RefundIn, response=JobOut, status=202, roles=ADMIN, idempotent=True,
          errors={404: "ORIGINAL_NOT_FOUND", 422: "NOT_REFUNDABLE"})
def refund(idempotency_key: str | None) -> Any:
    """Accepted as a job routed by the original's creditor; the settler decides the amount
    (REFUND_EXCEEDS_ORIGINAL, INSUFFICIENT_FUNDS), so concurrent refunds cannot pass the original."""
    body = parse_body(RefundIn)
    return accept(refund_operation(body), body, owner_id=current().user_id, key=idempotency_key)


def refund_operation(body: RefundIn) -> Refund:
    """The refund ``body`` asks for, routed by the original's debtor (the API's and the console's)."""
    target = refunds.refund_target(process_db(), body.jobId)
    if target is None:
        raise ApiError(404, "ORIGINAL_NOT_FOUND", "No such job.")
    if target.debtor is None:
        raise ApiError(422, "NOT_REFUNDABLE",
                       "Only a settled unlock, gift, subscription charge or transfer can be refunded.")
    return Refund(target.debtor, body.jobId, body.amount, body.reason)


def _set_status(user_id: str, status: WalletStatus) -> Any:
    wallet = accounts.set_wallet_status(process_db(), _user_id(user_id), status, _actor(), g.request_id)
    if wallet is None:
        raise ApiError(404, "USER_NOT_FOUND", "No such user.")
    # Settlement reads the wallet's status itself; the announcement makes every web
    # process drop what it caches about the user too, so nothing there outlives a freeze.
    user_changes.announce(user_id)
    return jsonify(userId=user_id, walletId=wallet["_id"], status=wallet["status"])


@endpoint(bp, "POST", "/wallets/<userId>/freeze", summary="Freeze a wallet: its jobs fail WALLET_FROZEN",
          response=WalletStatusOut, roles=ADMIN, errors={404: "USER_NOT_FOUND"})
def freeze(userId: str) -> Any:  # noqa: N803
    return _set_status(userId, WalletStatus.FROZEN)


@endpoint(bp, "POST", "/wallets/<userId>/unfreeze", summary="Unfreeze a wallet",
          response=WalletStatusOut, roles=ADMIN, errors={404: "USER_NOT_FOUND"})
def unfreeze(userId: str) -> Any:  # noqa: N803
    return _set_status(userId, WalletStatus.ACTIVE)


@endpoint(bp, "GET", "/system-wallets", summary="The platform's own wallets (revenue, processing, funding, payouts "
          "in flight), each the sum of its per-partition buckets", response=SystemWalletsOut, roles=ADMIN)
def system_wallets() -> Any:
    totals = wallets.platform_balances(process_db(), settings().ledger_partitions)
    return jsonify(items=[{"walletId": name, "balance": amount} for name, amount in totals.items()],
                   currency="COIN")
