"""The web tier's one way to read its settings: the current app's, stored by ``create_app``.

Code under ``api/`` that runs in a request or an app context calls :func:`settings`;
code that runs outside one (gunicorn's ``post_worker_init``, the waits hub's threads)
is handed the settings by its caller. ``tests/unit/test_layers.py`` keeps it that way.
"""

from __future__ import annotations

from flask import current_app

from infra.config import Settings


def settings() -> Settings:
    """The current app's settings (``create_app`` stores them under ``PURSER``)."""
    return current_app.config["PURSER"]
