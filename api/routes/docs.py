"""The OpenAPI document and a small human-readable index of it."""

from __future__ import annotations

import html
from typing import Any

from flask import Blueprint, Response, jsonify

from api.spec import REGISTRY, endpoint, openapi_document

bp = Blueprint("docs", __name__, url_prefix="/api")


@endpoint(bp, "GET", "/openapi.json", summary="This document", auth_required=False, limited=False)
def openapi() -> Any:
    from api import VERSION
    return jsonify(openapi_document(VERSION))


@endpoint(bp, "GET", "/docs", summary="Human-readable endpoint list", auth_required=False, limited=False)
def docs() -> Any:
    rows = "".join(
        f"<tr><td>{html.escape(ep.method)}</td><td><code>{html.escape(ep.rule)}</code></td>"
        f"<td>{html.escape(ep.summary)}</td><td>{'yes' if ep.auth else 'no'}</td></tr>"
        for ep in REGISTRY)
    page = ("<!doctype html><meta charset=utf-8><title>Purser API</title>"
            "<h1>Purser API</h1><p>Machine-readable: <a href=/api/openapi.json>/api/openapi.json</a></p>"
            f"<table border=1 cellpadding=4><tr><th>Method<th>Path<th>What<th>Auth</tr>{rows}</table>")
    return Response(page, mimetype="text/html")
