"""Blueprints of the API, one module per area."""

from __future__ import annotations

from flask import Flask

from infra.config import Settings


def register_blueprints(app: Flask, settings: Settings) -> None:
    """Part of the app factory: ``settings`` are the ones it is storing on ``app``."""
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

    if not settings.is_production:
        from api.routes import debug
        app.register_blueprint(debug.bp)
