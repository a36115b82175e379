"""Blueprints of the API, one module per area."""

from __future__ import annotations

from flask import Flask


def register_blueprints(app: Flask) -> None:
    from api.routes import (
        admin,
        auth,
        docs,
        gifts,
        health,
        jobs,
        payments,
        payouts,
        premium,
        statements,
        subscription,
        wallet,
        webhooks,
    )

    for module in (health, auth, wallet, premium, subscription, gifts, payments, payouts, admin, webhooks, jobs, docs):
        app.register_blueprint(module.bp)
    app.register_blueprint(statements.bp)
    app.register_blueprint(statements.admin_bp)

    from api.console import bp as console  # the operator console (server-rendered pages, not the API)

    app.register_blueprint(console)

    if not app.config["PURSER"].is_production:
        from api.routes import debug
        app.register_blueprint(debug.bp)
