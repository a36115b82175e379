"""Purser's Python client: ``Client`` for the HTTP API, ``webhooks.verify`` for job webhooks."""

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

__all__ = ["Balance", "Client", "Conflict", "Forbidden", "InvalidRequest", "Job", "JobFailed", "NotFound",
           "PurserError", "RateLimited", "ServerError", "Unauthorized", "WebhookVerificationError",
           "verify_webhook"]
