"""Strict JSON request bodies validated by pydantic models."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from api.errors import ApiError

M = TypeVar("M", bound=BaseModel)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_json() -> Any:
    """Parse the body as strict JSON: UTF-8, no NaN/Infinity, no duplicate keys."""
    mimetype = (request.mimetype or "").lower()
    if mimetype != "application/json":
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", "Send the body as application/json.")
    raw = request.get_data(cache=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "MALFORMED_JSON", "The body is not valid UTF-8.") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise ApiError(400, "MALFORMED_JSON", f"Duplicate key {str(exc)!r} in the body.") from None
    except (ValueError, RecursionError):
        raise ApiError(400, "MALFORMED_JSON", "The body is not valid JSON.") from None


def validation_problem(exc: ValidationError) -> ApiError:
    errors = [
        {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "message": err["msg"], "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    first = errors[0] if errors else {"field": "(body)", "message": "invalid"}
    return ApiError(422, "VALIDATION_FAILED", f"{first['field']}: {first['message']}",
                    extra={"errors": errors[:20]})


def parse_body(model: type[M]) -> M:
    data = read_json()
    if not isinstance(data, dict):
        raise ApiError(422, "VALIDATION_FAILED", "The body must be a JSON object.",
                       extra={"errors": [{"field": "(body)", "message": "expected an object",
                                          "type": "dict_type"}]})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc) from None


def parse_query(model: type[M]) -> M:
    try:
        return model.model_validate(request.args.to_dict(flat=True))
    except ValidationError as exc:
        raise validation_problem(exc) from None
