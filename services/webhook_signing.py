"""Standard Webhooks signatures for job events (https://www.standardwebhooks.com/).

Pure functions, no I/O. A secret is ``whsec_<base64 of 32 random bytes>``; the HMAC
key is the decoded base64 part, not the text. One signature is
``v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>``; while a
secret is rotated every valid secret signs and the header carries the signatures
space-separated, so a receiver holding either the old or the new secret accepts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh endpoint secret, shown to the admin once at registration or rotation."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of ``whsec_<base64>``: the decoded bytes (the spec's rule)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    try:
        return base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except binascii.Error as exc:
        raise ValueError("a webhook secret is whsec_<base64>") from exc


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of ``body`` sent as ``msg_id`` at ``timestamp`` (seconds)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(secret_key(secret), signed, hashlib.sha256).digest()).decode("ascii")


def headers(secrets_: Iterable[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers, one signature per valid secret."""
    signatures = " ".join(sign(s, msg_id, timestamp, body) for s in secrets_)
    if not signatures:
        raise ValueError("an endpoint without a valid secret cannot be signed for")
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signatures}
