"""The payout provider behind one small interface: submit a payout, ask for its status.

Production points ``PAYOUT_PROVIDER_URL`` at a real provider's adapter; development
and the tests run the bundled simulator (``devstack/provider_sim.py``), which speaks
the same HTTP contract:

* ``POST {url}/payouts`` ``{"payoutId", "userId", "amount"}`` with
  ``Idempotency-Key: <payoutId>`` -> ``200``/``201``/``202`` accepted (a repeat is
  the same payout, never a second one), ``4xx`` refused;
* ``GET {url}/payouts/<payoutId>`` -> ``{"status": "pending" | "paid" | "failed"}``,
  ``404`` when the provider never received that payout.

The payout id is the provider's idempotency key, so submitting again after a lost
answer is always safe. What this module never does is guess: an answer that did not
arrive is :data:`UNKNOWN`, not a failure, because the provider may have paid.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol

import requests

log = logging.getLogger("purser.payouts.provider")

SubmitAnswer = Literal["accepted", "unknown", "refused"]
ProviderStatus = Literal["paid", "failed", "pending", "unknown"]

ACCEPTED: SubmitAnswer = "accepted"
UNKNOWN: SubmitAnswer = "unknown"  # the answer was lost (network error, timeout, 5xx): ask again later
REFUSED: SubmitAnswer = "refused"  # the provider says no for good (4xx): it will never pay this payout

REQUEST_TIMEOUT = (3.05, 10.0)  # connect, read (seconds)


class ProviderUnavailable(Exception):
    """A status lookup got no answer: nothing can be concluded about the payout."""


class PayoutProvider(Protocol):
    def submit(self, payout_id: str, user_id: str, amount: int) -> SubmitAnswer:
        """Ask the provider to pay ``amount`` coins to ``user_id``'s bank, idempotently on ``payout_id``."""

    def status(self, payout_id: str) -> ProviderStatus:
        """``paid``/``failed``/``pending``, or ``unknown`` when the provider never received it.

        Raises :class:`ProviderUnavailable` when the provider could not be asked.
        """


class HttpPayoutProvider:
    """The HTTP adapter (the simulator's contract, above)."""

    def __init__(self, base_url: str, timeout: tuple[float, float] = REQUEST_TIMEOUT,
                 session: requests.Session | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def submit(self, payout_id: str, user_id: str, amount: int) -> SubmitAnswer:
        try:
            r = self.session.post(f"{self.base_url}/payouts", timeout=self.timeout,
                                  json={"payoutId": payout_id, "userId": user_id, "amount": amount},
                                  headers={"Idempotency-Key": payout_id})
        except requests.RequestException as exc:
            log.warning("payout submission: no answer", extra={"payoutId": payout_id, "error": str(exc)[:200]})
            return UNKNOWN
        if r.status_code in (200, 201, 202):
            return ACCEPTED
        if 400 <= r.status_code < 500 and r.status_code not in (408, 409, 425, 429):
            log.error("payout submission refused by the provider",
                      extra={"payoutId": payout_id, "status": r.status_code, "body": r.text[:200]})
            return REFUSED
        log.warning("payout submission: no usable answer", extra={"payoutId": payout_id, "status": r.status_code})
        return UNKNOWN

    def status(self, payout_id: str) -> ProviderStatus:
        try:
            r = self.session.get(f"{self.base_url}/payouts/{payout_id}", timeout=self.timeout)
        except requests.RequestException as exc:
            raise ProviderUnavailable(str(exc)[:200]) from None
        if r.status_code == 404:
            return "unknown"
        if r.status_code != 200:
            raise ProviderUnavailable(f"status lookup answered {r.status_code}")
        try:
            status = r.json().get("status")
        except ValueError:
            raise ProviderUnavailable("status lookup answered no JSON") from None
        if status not in ("paid", "failed", "pending"):
            raise ProviderUnavailable(f"status lookup answered an unknown status {status!r}")
        return status


def from_url(url: str | None) -> HttpPayoutProvider | None:
    """The configured provider (``PAYOUT_PROVIDER_URL``), or None when none is configured (dev/test)."""
    return HttpPayoutProvider(url) if url else None
