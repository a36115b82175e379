"""Flask CLI commands: ``flask --app api create-admin --email E --password P``."""

from __future__ import annotations

import sys

import click
from flask import Flask

from api import user_changes
from services import accounts
from services.store import process_db


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
        user_id, created = accounts.ensure_admin(process_db(), email, password, {"type": "cli", "id": "create-admin"})
        if not created:
            user_changes.announce(user_id)  # a promotion: running web processes must not keep the old role
        click.echo(f"created admin {user_id}" if created else f"promoted {user_id} to admin")
