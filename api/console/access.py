"""Logging in and out of the console: the API's credentials and login throttle, admins only."""

from __future__ import annotations

from typing import Any

from flask import Response, make_response, redirect, render_template, request, url_for

from api.console import guard
from api.console.blueprint import bp
from api.errors import ApiError
from api.routes.auth import throttled_login
from ledger.states import Role

FIELD_MAX = 320


def _next_page() -> str:
    # Only a console path: an absolute or scheme-relative URL would make this an open redirect.
    target = request.values.get("next", "")
    if target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("console.overview")


def _login_page(error: ApiError | None = None, status: int = 200) -> Response:
    token = guard.login_csrf_token()
    body = render_template("console/login.html", csrf_token=token, error=error, next_page=_next_page())
    response = make_response(body, status)
    if error is not None:
        for name, value in error.headers.items():
            response.headers[name] = value
    guard.set_cookie(response, guard.LOGIN_CSRF_COOKIE, token)
    return response


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        return _login_page()
    guard.check_login_csrf()
    email = request.form.get("email", "")[:FIELD_MAX]
    password = request.form.get("password", "")[:FIELD_MAX]
    try:
        user = throttled_login(email, password)
        if user["role"] != Role.ADMIN:
            raise ApiError(403, "FORBIDDEN", "The console is for admins.")
    except ApiError as exc:
        return _login_page(exc, exc.status)
    response = redirect(_next_page(), code=303)
    guard.start_session(response, user["_id"])
    return response


@bp.route("/logout", methods=["POST"])
def logout() -> Any:
    response = redirect(url_for("console.login"), code=303)
    guard.end_session(response)
    return response
