"""Premium content: publish, read, unlock."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from flask import Blueprint, jsonify

from api.auth import current
from api.errors import ApiError
from api.jsonbody import parse_body
from api.money import accept
from api.schemas import ContentIn, ContentOut, JobOut, UnlockIn
from api.spec import endpoint
from infra.mongo import get_db
from ledger.operations import Unlock
from ledger.timeutil import utcnow
from services.queries import content_view, has_access

bp = Blueprint("premium", __name__, url_prefix="/api/premium")


@endpoint(bp, "POST", "/content", summary="Publish premium content with a price",
          body=ContentIn, response=ContentOut, status=201, roles=("creator", "admin"))
def create_content() -> Any:
    body = parse_body(ContentIn)
    doc = {"_id": str(ObjectId()), "creatorId": current().user_id, "title": body.title, "price": body.price,
           "isActive": True, "createdAt": utcnow()}
    get_db().contents.insert_one(doc)
    return jsonify(content_view(doc)), 201


def _content(content_id: str) -> dict[str, Any] | None:
    return get_db().contents.find_one({"_id": content_id, "isActive": True})


@endpoint(bp, "GET", "/content/<contentId>", summary="Content details and whether the caller has access",
          response=ContentOut, errors=(404,))
def get_content(contentId: str) -> Any:  # noqa: N803 - the path parameter name is the contract
    content = _content(contentId)
    if content is None:
        raise ApiError(404, "CONTENT_NOT_FOUND", "No such content.")
    return jsonify(**content_view(content), unlocked=has_access(get_db(), current().user_id, content, utcnow()))


@endpoint(bp, "POST", "/unlock", summary="Buy access to premium content (settled asynchronously)",
          body=UnlockIn, response=JobOut, status=202, idempotent=True)
def unlock() -> Any:
    body = parse_body(UnlockIn)
    me = current().user_id
    content = _content(body.contentId)
    if content is None:
        raise ApiError(422, "CONTENT_NOT_FOUND", "No such content.")
    if content["creatorId"] == me:
        raise ApiError(422, "OWN_CONTENT", "Creators cannot unlock their own content.")
    return accept(Unlock(me, body.contentId), body, owner_id=me)
