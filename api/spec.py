"""Route registry that doubles as the OpenAPI 3 document.

Every endpoint is declared once with :func:`endpoint`: its path, method, models,
auth, error answers and the links a client follows from its answer. The same
declaration registers the Flask view, has ``api/auth.py`` enforce authentication and
the declared roles, and produces ``/api/openapi.json``, so the document cannot drift
from the routes. This module reads no data and decides no authorization itself.

Error answers name their problem ``code`` per status: ``errors={422: ("OWN_CONTENT",)}``
(the codes the view itself gives) plus the codes the declaration implies (a body can
be malformed, a money request's key reused...; :data:`IMPLIED_CODES`). The document then
constrains ``code`` with an ``enum`` per status. A plain tuple ``errors=(404,)`` still
works: those statuses are documented with an unconstrained ``code``.
tests/api/test_openapi_codes.py reads the views' source and fails when a view can give a
code its declaration does not list.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint
from pydantic import BaseModel

from api import auth
from api.errors import PROBLEM_CODES, problem_example
from api.response_schemas import JobOut, Problem
from ledger.states import Role

_ERROR_TEXT = {
    400: "Malformed request or idempotency key problem",
    401: "Missing or invalid credentials",
    403: "Not allowed for the caller's role",
    404: "Not found",
    409: "Conflict",
    413: "Body too large",
    415: "Content type must be application/json",
    422: "Refused: the request is invalid, or what it refers to does not allow it",
    429: "Rate limited",
    503: "Dependency unavailable or settlement backlog full; retry after Retry-After (with the same "
         "Idempotency-Key for money requests)",
}

Codes = tuple[str, ...]
# ``(404, 409)`` (statuses only, codes not constrained) or ``{404: ("JOB_NOT_FOUND",), ...}``.
Errors = tuple[int, ...] | Mapping[int, Codes | str]

# The codes a declaration implies, by what it declares. Each comes from one place, which
# tests/api/test_openapi_codes.py reads: auth -> api/auth.py (current, the stored role read),
# roles -> auth.require_roles, body -> api/jsonbody.py parse_body, query -> parse_query,
# idempotent -> api/money.py (idempotency_key, accept), a path parameter -> Werkzeug's
# 404 for a segment no route matches, limited -> api/limits.py.
IMPLIED_CODES: dict[str, dict[int, Codes]] = {
    "auth": {401: ("UNAUTHORIZED",), 503: ("SERVICE_UNAVAILABLE",)},
    "roles": {403: ("FORBIDDEN",)},
    "body": {400: ("MALFORMED_JSON",), 413: ("PAYLOAD_TOO_LARGE",), 415: ("UNSUPPORTED_MEDIA_TYPE",),
             422: ("VALIDATION_FAILED",), 503: ("SERVICE_UNAVAILABLE",)},
    "query": {422: ("VALIDATION_FAILED",)},
    "idempotent": {400: ("IDEMPOTENCY_KEY_REQUIRED", "IDEMPOTENCY_KEY_INVALID"), 422: ("IDEMPOTENCY_KEY_REUSED",),
                   503: ("SERVICE_UNAVAILABLE", "BACKLOG_FULL")},
    "path": {404: ("NOT_FOUND",)},
    "limited": {429: ("RATE_LIMITED",)},
}


@dataclass(frozen=True)
class Link:
    """An OpenAPI link from a success answer to the operation a client calls next.

    ``operation`` is the target's operationId (``<blueprint>.<view>``); values are runtime
    expressions such as ``$response.body#/jobId``.
    """

    operation: str
    description: str
    parameters: dict[str, str] = field(default_factory=dict)
    body: dict[str, str] | None = None


JOB_LINK = Link("jobs.get_job", "Follow the accepted job until it is settled or failed (Prefer: wait=N)",
                parameters={"jobId": "$response.body#/jobId"})


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
    # status -> the problem codes it can carry; a status missing here has unconstrained codes.
    codes: dict[int, Codes] = field(default_factory=dict)
    declared: dict[int, Codes] = field(default_factory=dict)  # the view's own, as declared
    links: dict[str, Link] = field(default_factory=dict)
    view: Callable[..., Any] | None = None


REGISTRY: list[Endpoint] = []
# The events Purser POSTs to registered endpoints (OpenAPI 3.1 ``webhooks``): type -> (summary, body model).
WEBHOOK_EVENTS: dict[str, tuple[str, type[BaseModel]]] = {}


def webhook_event(event_type: str, summary: str, body: type[BaseModel]) -> None:
    """Declare an outgoing webhook event and the body every endpoint receives for it."""
    WEBHOOK_EVENTS[event_type] = (summary, body)


def _implied(*, auth_required: bool, roles: tuple[Role, ...] | None, body: bool, query: bool, idempotent: bool,
             path: bool, limited: bool) -> dict[int, set[str]]:
    flags = {"auth": auth_required, "roles": bool(roles), "body": body, "query": query, "idempotent": idempotent,
             "path": path, "limited": limited}
    out: dict[int, set[str]] = {}
    for flag, on in flags.items():
        for status, codes in IMPLIED_CODES[flag].items() if on else ():
            out.setdefault(status, set()).update(codes)
    return out


def _declared(errors: Errors) -> tuple[dict[int, Codes], set[int]]:
    """``(status -> codes, statuses whose codes are not given)`` of an ``errors=`` argument."""
    if isinstance(errors, Mapping):
        return {int(s): (c,) if isinstance(c, str) else tuple(c) for s, c in errors.items()}, set()
    return {}, {int(s) for s in errors}


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
    errors: Errors = (),
    auth_required: bool = True,
    roles: tuple[Role, ...] | None = None,
    idempotent: bool = False,
    extra_headers: dict[str, str] | None = None,
    limited: bool = True,
    links: Mapping[str, Link] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare, document and protect one endpoint.

    ``errors`` maps each status the view itself answers to the problem codes it can carry
    (``{422: ("OWN_CONTENT",)}``); a plain tuple of statuses leaves the codes unconstrained.
    ``links`` name the operations a client calls next with values from the answer; an
    accepted money job (``202`` with a ``JobOut``) links to ``GET /api/jobs/{jobId}`` by itself.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if auth_required:
                # g.principal carries the stored role (api/__init__.py), so a demotion
                # takes effect before the caller's token expires.
                auth.require_roles(auth.current(), roles)
            if idempotent:
                # Checked before the body so a client learns about the key first, and
                # handed to the view as an argument (the view passes it to accept()).
                from api.money import idempotency_key
                kwargs["idempotency_key"] = idempotency_key()
            return view(*args, **kwargs)

        wrapped.purser_auth_required = auth_required  # type: ignore[attr-defined]
        wrapped.purser_limited = limited  # type: ignore[attr-defined]
        bp.add_url_rule(rule, endpoint=view.__name__, view_func=wrapped, methods=[method])
        declared, open_statuses = _declared(errors)
        codes = _implied(auth_required=auth_required, roles=roles, body=body is not None, query=query is not None,
                         idempotent=idempotent, path=bool(_PATH_PARAM.search(rule)), limited=limited)
        for status_code, named in declared.items():
            codes.setdefault(status_code, set()).update(named)
        statuses = set(codes) | open_statuses
        all_links = dict(links or {})
        if status == 202 and response is JobOut:
            all_links.setdefault("GetJob", JOB_LINK)
        REGISTRY.append(Endpoint(
            method.upper(), (bp.url_prefix or "") + rule, summary, bp.name, body, query, status, response,
            tuple(sorted(statuses)), auth_required, roles, idempotent, extra_headers or {}, limited,
            f"{bp.name}.{view.__name__}",
            codes={s: tuple(sorted(c)) for s, c in sorted(codes.items()) if s not in open_statuses},
            declared=declared, links=all_links, view=view))
        return wrapped

    return decorate


_PATH_PARAM = re.compile(r"<(?:[a-z]+:)?([A-Za-z_]+)>")
ID_PATTERN = "^[0-9a-f]{24}$"
# Path parameters that are not ids (a statement's month).
_PATH_PATTERNS = {"period": "^[0-9]{4}-(0[1-9]|1[0-2])$"}


def _schema_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, str]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        components[name] = sub
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    qschema = model.model_json_schema()
    params = []
    for name, prop in qschema.get("properties", {}).items():
        prop = dict(prop)
        # ``X | None = None`` is "may be absent" in a query string; ``null`` has no spelling there.
        variants = [v for v in prop.pop("anyOf", []) if v.get("type") != "null"]
        if len(variants) == 1:
            prop = {**variants[0], **prop}
        elif variants:
            prop["anyOf"] = variants
        if prop.get("default", 0) is None:
            del prop["default"]
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in qschema.get("required", []),
                                 "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def _problem_response(status: int, codes: Codes | None, problem_ref: dict[str, str]) -> dict[str, Any]:
    text = _ERROR_TEXT.get(status, "Error")
    if codes is None:  # declared as a bare status: any code
        return {"description": text, "content": {"application/problem+json": {"schema": problem_ref}}}
    lines = "".join(f"\n- `{code}`: {PROBLEM_CODES.get(code, code)}" for code in codes)
    schema = {"allOf": [problem_ref, {"type": "object", "properties": {
        "status": {"const": status}, "code": {"type": "string", "enum": list(codes)}}}]}
    examples = {code: {"summary": PROBLEM_CODES.get(code, code), "value": problem_example(status, code)}
                for code in codes}
    return {"description": f"{text}. `code` is one of:{lines}",
            "content": {"application/problem+json": {"schema": schema, "examples": examples}}}


def _link(link: Link) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": link.operation, "description": link.description}
    if link.parameters:
        out["parameters"] = dict(link.parameters)
    if link.body is not None:
        out["requestBody"] = dict(link.body)
    return out


def openapi_document(version: str) -> dict[str, Any]:
    components: dict[str, Any] = {}
    problem_ref = _schema_ref(Problem, components)
    paths: dict[str, Any] = {}
    for ep in REGISTRY:
        path = _PATH_PARAM.sub(r"{\1}", ep.rule)
        op: dict[str, Any] = {"summary": ep.summary, "tags": [ep.tag], "operationId": ep.endpoint_name,
                              "responses": {}}
        params = [{"name": name, "in": "path", "required": True,
                   "schema": {"type": "string", "pattern": _PATH_PATTERNS.get(name, ID_PATTERN)}}
                  for name in _PATH_PARAM.findall(ep.rule)]
        if ep.query is not None:
            params.extend(_query_parameters(ep.query))
        if ep.idempotent:
            params.append({"name": "Idempotency-Key", "in": "header", "required": True,
                           "description": "Chosen by the client, one per money request; a retry sends the same key "
                                          "(same body: the first answer is replayed; another body: 422).",
                           "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                                      "pattern": "^[\\x21-\\x7e]+$"}})
        for name in ep.extra_headers:
            params.append({"name": name, "in": "header", "required": False, "schema": {"type": "string"},
                           "description": f"Format: {ep.extra_headers[name]}"})
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": _schema_ref(ep.body, components)}}}
        ok: dict[str, Any] = {"description": "OK" if ep.status < 300 else "Accepted"}
        if ep.response is not None:
            ok["content"] = {"application/json": {"schema": _schema_ref(ep.response, components)}}
        if ep.idempotent or (ep.status == 202 and ep.response is JobOut):  # every accepted job has a Location
            ok["headers"] = {
                "Location": {"description": "/api/jobs/{jobId} of the accepted job", "schema": {"type": "string"}},
                "Idempotent-Replayed": {"description": "`true` when this answer replays the first one for the "
                                                       "Idempotency-Key", "schema": {"type": "string"}}}
        if ep.links:
            ok["links"] = {name: _link(link) for name, link in ep.links.items()}
        op["responses"][str(ep.status)] = ok
        for status in ep.errors:
            op["responses"][str(status)] = _problem_response(status, ep.codes.get(status), problem_ref)
        if ep.auth:
            op["security"] = [{"bearerAuth": []}]
        paths.setdefault(path, {})[ep.method.lower()] = op
    webhooks: dict[str, Any] = {}
    for event_type, (summary, body) in sorted(WEBHOOK_EVENTS.items()):
        webhooks[event_type] = {"post": {
            "summary": summary, "operationId": f"webhook.{event_type}", "tags": ["webhook events"],
            "description": "Signed per Standard Webhooks (webhook-id, webhook-timestamp, webhook-signature); "
                           "delivered at least once: deduplicate on webhook-id. See docs/webhooks.md.",
            "requestBody": {"required": True,
                            "content": {"application/json": {"schema": _schema_ref(body, components)}}},
            "responses": {"2XX": {"description": "Received; any other answer is retried (410 disables the "
                                                 "endpoint)"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Purser API", "version": version,
                 "description": "Wallet transactions for creator platforms. Money requests are accepted "
                                "as jobs (202) and settled asynchronously; poll /api/jobs/{jobId}. Errors are "
                                "application/problem+json with a stable `code`, listed per answer; a job that "
                                "fails carries its code in `error.code` (JobOut). Amounts are integers: `1.0`, "
                                "`\"1\"` and `true` are refused with 422 VALIDATION_FAILED."},
        "paths": paths,
        "webhooks": webhooks,
        "components": {"schemas": components,
                       "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                          "bearerFormat": "JWT"}}},
    }
