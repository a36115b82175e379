"""Flask CLI commands: ``flask --app api create-admin --email E --password P``."""

from __future__ import annotations

import sys

import click
from flask import Flask

from infra.mongo import get_db
from services import users


def register_cli(app: Flask) -> None:
    @app.cli.command("create-admin")
    @click.option("--email", required=True)
    @click.option("--password", required=True, help="'-' reads the password from stdin")
    def create_admin(email: str, password: str) -> None:
        """Create an admin user, or promote an existing one (password unchanged)."""
        if password == "-":
            password = sys.stdin.readline().rstrip("\n")
        if len(password) < 8:
            raise click.ClickException("password must be at least 8 characters")
        db = get_db()
        existing = db.users.find_one({"email": users.normalise_email(email)})
        if existing:
            users.change_role(db, existing["_id"], "admin", {"type": "cli", "id": "create-admin"}, None)
            click.echo(f"promoted {existing['_id']} to admin")
            return
        user = users.create_user(db, email, password, role="admin")
        click.echo(f"created admin {user['_id']}")
