"""Small lookups shared by the money routes: cheap existence checks at accept time."""

from __future__ import annotations

from api.errors import ApiError
from services import wallets
from services.queries import BadCursor
from services.store import process_db


def require_user_wallet(user_id: str, code: str = "RECEIVER_NOT_FOUND") -> None:
    """422 ``code`` when there is no such user (a frozen wallet is settlement's to refuse)."""
    if not wallets.user_exists(process_db(), user_id):
        raise ApiError(422, code, "No such user.")


def refuse_self(caller: str, other: str) -> None:
    if caller == other:
        raise ApiError(422, "SELF_TRANSFER", "You cannot send coins to yourself.")


def bad_cursor(exc: BadCursor) -> ApiError:
    return ApiError(422, "VALIDATION_FAILED", "cursor: not a cursor returned by this API",
                    extra={"errors": [{"field": "cursor", "message": "invalid cursor", "type": "cursor"}]})
