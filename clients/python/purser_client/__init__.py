"""Purser's Python client: ``Client`` for the HTTP API, ``webhooks.verify`` for job webhooks."""

__version__ = "0.2.0"  # the package's version (pyproject.toml reads it from here)

from purser_client.client import Client
from purser_client.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    JobFailed,
    NotFound,
    PurserError,
    RateLimited,
    ServerError,
    Unauthorized,
    WebhookVerificationError,
)
from purser_client.models import Balance, Job
from purser_client.webhooks import verify as verify_webhook

__all__ = ["__version__", "Balance", "Client", "Conflict", "Forbidden", "InvalidRequest", "Job", "JobFailed",
           "NotFound", "PurserError", "RateLimited", "ServerError", "Unauthorized", "WebhookVerificationError",
           "verify_webhook"]
