"""Route registry that doubles as the OpenAPI 3 document.

Every endpoint is declared once with :func:`endpoint`: its path, method, models,
auth and error answers. The same declaration registers the Flask view, has
``api/auth.py`` enforce authentication and the declared roles, and produces
``/api/openapi.json``, so the document cannot drift from the routes. This module
reads no data and decides no authorization itself.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, g
from pydantic import BaseModel

from api import auth
from api.schemas import Problem
from ledger.states import Role

_ERROR_TEXT = {
    400: "Malformed request or idempotency key problem",
    401: "Missing or invalid token",
    403: "Role not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Content type must be application/json",
    422: "Validation failed or referenced entity unknown",
    429: "Rate limited",
    503: "Dependency unavailable",
}


@dataclass
class Endpoint:
    method: str
    rule: str
    summary: str
    tag: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    status: int
    response: type[BaseModel] | None
    errors: tuple[int, ...]
    auth: bool
    roles: tuple[Role, ...] | None
    idempotent: bool
    extra_headers: dict[str, str] = field(default_factory=dict)
    limited: bool = True
    endpoint_name: str = ""


REGISTRY: list[Endpoint] = []


def endpoint(
    bp: Blueprint,
    method: str,
    rule: str,
    *,
    summary: str,
    response: type[BaseModel] | None = None,
    status: int = 200,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    errors: tuple[int, ...] = (),
    auth_required: bool = True,
    roles: tuple[Role, ...] | None = None,
    idempotent: bool = False,
    extra_headers: dict[str, str] | None = None,
    limited: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare, document and protect one endpoint."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if auth_required:
                # g.principal carries the stored role (api/__init__.py), so a demotion
                # takes effect before the caller's token expires.
                auth.require_roles(auth.current(), roles)
            if idempotent:
                # Checked before the body so a client learns about the key first.
                from api.money import idempotency_key
                g.idempotency_key = idempotency_key()
            return view(*args, **kwargs)

        wrapped.purser_auth_required = auth_required  # type: ignore[attr-defined]
        wrapped.purser_limited = limited  # type: ignore[attr-defined]
        bp.add_url_rule(rule, endpoint=view.__name__, view_func=wrapped, methods=[method])
        errs = set(errors)
        if auth_required:
            errs |= {401}
        if roles:
            errs |= {403}
        if body is not None:
            errs |= {413, 415, 422, 400}
        if query is not None:
            errs |= {422}
        if idempotent:
            errs |= {400, 409, 422}
        if limited:
            errs |= {429}
        REGISTRY.append(Endpoint(method.upper(), (bp.url_prefix or "") + rule, summary, bp.name, body, query,
                                 status, response, tuple(sorted(errs)), auth_required, roles, idempotent,
                                 extra_headers or {}, limited, f"{bp.name}.{view.__name__}"))
        return wrapped

    return decorate


_PATH_PARAM = re.compile(r"<(?:[a-z]+:)?([A-Za-z_]+)>")


def _schema_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def openapi_document(version: str) -> dict[str, Any]:
    components: dict[str, Any] = {}
    problem_ref = _schema_ref(Problem, components)
    paths: dict[str, Any] = {}
    for ep in REGISTRY:
        path = _PATH_PARAM.sub(r"{\1}", ep.rule)
        op: dict[str, Any] = {"summary": ep.summary, "tags": [ep.tag], "operationId": ep.endpoint_name,
                              "responses": {}}
        params = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": "^[0-9a-f]{24}$"}}
                  for name in _PATH_PARAM.findall(ep.rule)]
        if ep.query is not None:
            qschema = ep.query.model_json_schema()
            for name, prop in qschema.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in qschema.get("required", []),
                               "schema": prop})
        if ep.idempotent:
            params.append({"name": "Idempotency-Key", "in": "header", "required": True,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                                      "pattern": "^[\\x21-\\x7e]+$"}})
        for name in ep.extra_headers:
            params.append({"name": name, "in": "header", "required": False, "schema": {"type": "string"}})
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": _schema_ref(ep.body, components)}}}
        ok: dict[str, Any] = {"description": "OK" if ep.status < 300 else "Accepted"}
        if ep.response is not None:
            ok["content"] = {"application/json": {"schema": _schema_ref(ep.response, components)}}
        op["responses"][str(ep.status)] = ok
        if ep.idempotent or ep.status == 202:  # every accepted job (the webhook too) has a Location
            op["responses"][str(ep.status)]["headers"] = {
                "Location": {"schema": {"type": "string"}},
                "Idempotent-Replayed": {"schema": {"type": "string"}}}
        for code in ep.errors:
            op["responses"][str(code)] = {"description": _ERROR_TEXT.get(code, "Error"),
                                          "content": {"application/problem+json": {"schema": problem_ref}}}
        if ep.auth:
            op["security"] = [{"bearerAuth": []}]
        paths.setdefault(path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Purser API", "version": version,
                 "description": "Wallet transactions for creator platforms. Money requests are accepted "
                                "as jobs (202) and settled asynchronously; poll /api/jobs/{jobId}."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                          "bearerFormat": "JWT"}}},
    }
