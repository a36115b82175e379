"""The console's blueprint: its hooks, its error pages and the helpers every page uses."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, redirect, render_template, request, url_for

from api.console import guard
from api.console.forms import new_form_key
from api.errors import ApiError, problem
from ledger.states import Role
from services import operator_audit

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static", static_url_path="/static")
bp.before_request(guard.require_operator)
bp.after_request(guard.secure_headers)

# What a redirect after an action says (the page shows fixed text: nothing from the request is echoed).
NOTICES = {
    "refund": "Refund accepted: its job is below; the balances move once it settles.",
    "frozen": "Wallet frozen: its jobs now fail WALLET_FROZEN.",
    "unfrozen": "Wallet unfrozen.",
    "replayed": "Delivery replayed: a new run of attempts starts now.",
    "asked": "The provider answered; its answer is recorded below.",
    "already": "This form was already submitted: it was applied once, nothing more was done.",
}


@bp.errorhandler(ApiError)
def _refused(exc: ApiError) -> Any:
    wanted = request.accept_mimetypes.best_match(["application/problem+json", "application/json", "text/html"])
    if wanted != "text/html":
        return problem(exc.status, exc.code, exc.detail, title=exc.title, headers=exc.headers, extra=exc.extra)
    session = g.get("console")
    body = render_template("console/error.html", error=exc, operator=session,
                           csrf_token=session.csrf if session is not None else "")
    return Response(body, status=exc.status, headers=exc.headers, mimetype="text/html")


def page(template: str, **values: Any) -> str:
    """A console page: the session's CSRF token and the notice are always at hand."""
    return render_template(f"console/{template}", csrf_token=g.console.csrf, operator=g.console,
                           notice=NOTICES.get(request.args.get("done", "")), new_form_key=new_form_key, **values)


def done(endpoint: str, notice: str, **values: Any) -> Response:
    """Post/redirect/get: after an action, the page that shows its effect."""
    return redirect(url_for(endpoint, done=notice, **values), code=303)


def actor() -> dict[str, str]:
    return operator_audit.actor_of(g.console.user_id, Role.ADMIN)
