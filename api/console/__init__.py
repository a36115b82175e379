"""The operator console: server-rendered pages under ``/console`` for admins (issue 26).

Pages and actions go through the same services as the admin API; see
``docs/operations.md`` (how an operator uses it) and ``api/console/guard.py`` (who
may, and how the pages protect themselves).
"""

from __future__ import annotations

from api.console import access, lookup, money_out, overview, webhooks  # noqa: F401 - they add the routes
from api.console.blueprint import bp

__all__ = ["bp"]
