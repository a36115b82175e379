"""Small lookups shared by the money routes: cheap existence checks at accept time."""

from __future__ import annotations

from typing import Any

from api.errors import ApiError
from infra.mongo import get_db
from services.queries import BadCursor


def require_user_wallet(user_id: str, code: str = "RECEIVER_NOT_FOUND") -> dict[str, Any]:
    wallet = get_db().wallets.find_one({"_id": user_id, "userId": user_id}, {"status": 1})
    if wallet is None:
        raise ApiError(422, code, "No such user.")
    return wallet


def refuse_self(caller: str, other: str) -> None:
    if caller == other:
        raise ApiError(422, "SELF_TRANSFER", "You cannot send coins to yourself.")


def bad_cursor(exc: BadCursor) -> ApiError:
    return ApiError(422, "VALIDATION_FAILED", "cursor: not a cursor returned by this API",
                    extra={"errors": [{"field": "cursor", "message": "invalid cursor", "type": "cursor"}]})
