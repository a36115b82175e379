"""Premium content: publish, read, unlock."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.auth import current
from api.errors import ApiError
from api.jsonbody import parse_body
from api.money import accept
from api.request_schemas import ContentIn, UnlockIn
from api.response_schemas import ContentOut, JobOut
from api.spec import Link, endpoint
from ledger.operations import Unlock
from ledger.states import Role
from services import contents
from services.store import process_db

bp = Blueprint("premium", __name__, url_prefix="/api/premium")


@endpoint(bp, "POST", "/content", summary="Publish premium content with a price",
          body=ContentIn, response=ContentOut, status=201, roles=(Role.CREATOR, Role.ADMIN),
          links={"GetContent": Link("premium.get_content", "Read the new content",
                                    parameters={"contentId": "$response.body#/contentId"}),
                 "Unlock": Link("premium.unlock", "Buy access to it (its creator is refused OWN_CONTENT)",
                                body={"contentId": "$response.body#/contentId"})})
def create_content() -> Any:
    body = parse_body(ContentIn)
    doc = contents.publish(process_db(), current().user_id, body.title, body.price)
    return jsonify(contents.content_view(doc)), 201


@endpoint(bp, "GET", "/content/<contentId>", summary="Content details and whether the caller has access",
          response=ContentOut, errors={404: "CONTENT_NOT_FOUND"})
def get_content(contentId: str) -> Any:  # noqa: N803 - the path parameter name is the contract
    content = contents.active_content(process_db(), contentId)
    if content is None:
        raise ApiError(404, "CONTENT_NOT_FOUND", "No such content.")
    return jsonify(**contents.content_view(content),
                   unlocked=contents.has_access(process_db(), current().user_id, content))


@endpoint(bp, "POST", "/unlock", summary="Buy access to premium content (settled asynchronously)",
          body=UnlockIn, response=JobOut, status=202, idempotent=True,
          errors={422: ("CONTENT_NOT_FOUND", "OWN_CONTENT")})
def unlock(idempotency_key: str | None) -> Any:
    body = parse_body(UnlockIn)
    me = current().user_id
    creator = contents.active_creator(process_db(), body.contentId)
    if creator is None:
        raise ApiError(422, "CONTENT_NOT_FOUND", "No such content.")
    if creator == me:
        raise ApiError(422, "OWN_CONTENT", "Creators cannot unlock their own content.")
    return accept(Unlock(me, body.contentId), body, owner_id=me, key=idempotency_key)
