"""``python -m devstack.sign BODY``: the ``X-Purser-Signature`` a payment provider would send.

For trying the provider webhooks of a dev stack by hand (README, "Try it")::

    BODY='{"providerTxId":"try-1","userId":"...","amount":1000}'
    curl -sS "$PURSER/api/payments/webhook" -H 'Content-Type: application/json' \\
        -H "X-Purser-Signature: $(.venv/bin/python -m devstack.sign "$BODY")" -d "$BODY"

The key is the stack's: ``PROVIDER_WEBHOOK_SECRET`` when set, else the secret the dev
stack generated under ``$PURSER_VAR_DIR/secrets`` (``var/`` by default). Only the
signature is computed here, so the request itself stays visible in the command.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECRET_NAME = "provider_webhook_secret"  # the file infra.config_parsers.dev_secret writes


class NoSecret(RuntimeError):
    """No webhook secret for this stack: none in the environment, none generated yet."""


def webhook_secret(env: Mapping[str, str] | None = None) -> str:
    """The provider webhook secret of the dev stack that ``env`` describes.

    Read, never generated: signing with a fresh secret the stack does not know would
    only produce a confusing 401.
    """
    env = os.environ if env is None else env
    if env.get("PROVIDER_WEBHOOK_SECRET"):
        return env["PROVIDER_WEBHOOK_SECRET"]
    var_dir = Path(env.get("PURSER_VAR_DIR") or ROOT / "var")
    path = var_dir / "secrets" / SECRET_NAME
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if not value:
        raise NoSecret(f"no {path}: start the stack first (make run / make demo), or set PROVIDER_WEBHOOK_SECRET")
    return value


def signature(body: str, env: Mapping[str, str] | None = None, timestamp: int | None = None) -> str:
    """``t=<unix>,v1=<hex HMAC-SHA256 of "<unix>." + body>``, as the API verifies it."""
    from api.routes.payments import sign

    return sign(webhook_secret(env), int(time.time()) if timestamp is None else timestamp, body.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.sign", description=__doc__.splitlines()[0])
    parser.add_argument("body", help="the exact request body to sign ('-' reads it from stdin)")
    args = parser.parse_args(argv)
    body = sys.stdin.read() if args.body == "-" else args.body
    try:
        print(signature(body))
    except NoSecret as exc:
        print(f"devstack.sign: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
