"""Gifts to creators."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from api.auth import current
from api.jsonbody import parse_body
from api.money import accept
from api.request_schemas import GiftIn
from api.response_schemas import JobOut
from api.routes.common import refuse_self, require_user_wallet
from api.spec import endpoint
from ledger.operations import Gift

bp = Blueprint("gifts", __name__, url_prefix="/api")


@endpoint(bp, "POST", "/gifts", summary="Send a gift to a creator (split 80/15/5, settled asynchronously)",
          body=GiftIn, response=JobOut, status=202, idempotent=True,
          errors={422: ("SELF_TRANSFER", "RECEIVER_NOT_FOUND")})
def gift(idempotency_key: str | None) -> Any:
    body = parse_body(GiftIn)
    me = current().user_id
    refuse_self(me, body.creatorId)
    require_user_wallet(body.creatorId)
    return accept(Gift(me, body.creatorId, body.amount, body.message), body, owner_id=me, key=idempotency_key)
