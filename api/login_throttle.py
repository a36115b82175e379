"""Failed-login throttling: a lockout per e-mail, a much higher bound per client address.

Only failed attempts count. A login that succeeds costs nothing against either
bound, so an office or a mobile carrier behind one address can log in as many
people as it has; a password guesser is stopped per account after
``RATE_LIMITS_LOGIN_EMAIL`` failures (default 5 in 15 minutes) from any number of
addresses, and per address after ``RATE_LIMITS_LOGIN_ADDRESS`` failures (default
100 in 15 minutes) over any number of accounts.

Each bound is a sliding log in Redis: a sorted set of attempt ids scored by the
Redis server's clock. An attempt is *reserved* in both logs atomically before the
password is verified (so a burst of parallel guesses cannot slip past the bound
while the first ones are being hashed) and *released* again unless it failed: a
successful login removes its own entry from the address log and clears the
e-mail's log (N consecutive failures lock an account, not N in a lifetime).

A refusal is ``429 RATE_LIMITED`` with ``Retry-After`` (seconds until the oldest
failure leaves the window) and ``X-RateLimit-*``. Like the other limits
(``api/limits.py``), an unreachable Redis fails open with a WARNING, a counter and
a short pause.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from limits import parse as parse_limit

from api.errors import ApiError
from infra import metrics
from infra.config import Settings

log = logging.getLogger("purser.ratelimit")

KEY_PREFIX = "purser:login-failures:"
SCOPE_EMAIL = "login-email"
SCOPE_ADDRESS = "login-address"
BREAKER_SECONDS = 5.0

# KEYS: e-mail log, address log. ARGV: member, e-mail limit, e-mail window, address limit, address window.
# Reply: {1} when reserved, else {0, scope index (1 e-mail, 2 address), seconds until a slot frees, limit}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i = 1, 2 do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  if redis.call('ZCARD', KEYS[i]) >= limit then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    return {0, i, tostring(tonumber(oldest[2]) + window - now), limit}
  end
end
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], now, ARGV[1])
  redis.call('EXPIRE', KEYS[i], tonumber(ARGV[2 * i + 1]))
end
return {1}
"""


@dataclass(frozen=True)
class Bound:
    amount: int
    window: int  # seconds

    @classmethod
    def parse(cls, text: str) -> Bound:
        item = parse_limit(text)
        return cls(int(item.amount), int(item.get_expiry()))


@dataclass
class Attempt:
    """A reserved login attempt: call :meth:`failed` or :meth:`release` once its outcome is known."""

    throttle: LoginThrottle
    email_key: str
    address_key: str
    member: str
    reserved: bool

    def failed(self) -> None:
        """The password was wrong (or the account unknown): the reservation stays as a failure."""
        self.reserved = False

    def succeeded(self) -> None:
        """Logged in: not a failure, and the account's earlier failures are forgiven."""
        if not self.reserved:
            return
        self.reserved = False
        self.throttle._run(lambda r: r.pipeline(transaction=False)
                           .delete(self.email_key).zrem(self.address_key, self.member).execute())

    def release(self) -> None:
        """No verdict (the store failed, the server was busy): the attempt does not count."""
        if not self.reserved:
            return
        self.reserved = False
        self.throttle._run(lambda r: r.pipeline(transaction=False)
                           .zrem(self.email_key, self.member).zrem(self.address_key, self.member).execute())


class LoginThrottle:
    """The two failure bounds of one app, on the process's Redis client."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.email = Bound.parse(settings.rate_limits_login_email)
        self.address = Bound.parse(settings.rate_limits_login_address)
        self._open_until = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def email_key(email: str) -> str:
        # Hashed: Redis keys should not hold e-mail addresses.
        return KEY_PREFIX + "email:" + hashlib.sha256(email.encode()).hexdigest()[:32]

    @staticmethod
    def address_key(address: str) -> str:
        return KEY_PREFIX + "addr:" + address

    def _storage_failed(self, exc: BaseException) -> None:

        metrics.RATE_LIMIT_STORAGE_ERRORS.inc()
        with self._lock:
            self._open_until = time.monotonic() + BREAKER_SECONDS
        log.warning("login throttle storage unreachable; attempts pass unchecked (fail open)",
                    extra={"error": f"{type(exc).__name__}: {exc}"[:300], "pauseSeconds": BREAKER_SECONDS})

    def _run(self, action: Callable[[Any], Any]) -> Any:
        from infra.redis_client import get_redis

        if time.monotonic() < self._open_until:
            return None
        try:
            return action(get_redis())
        except Exception as exc:  # noqa: BLE001 - any storage failure fails open
            self._storage_failed(exc)
            return None

    def reserve(self, email: str, address: str) -> Attempt:
        """Reserve an attempt for ``email`` (normalised) from ``address``, or raise the 429."""
        attempt = Attempt(self, self.email_key(email), self.address_key(address), uuid.uuid4().hex, False)
        if not self.enabled:
            return attempt
        args = [attempt.member, self.email.amount, self.email.window, self.address.amount, self.address.window]
        reply = self._run(lambda r: r.register_script(_RESERVE)(keys=[attempt.email_key, attempt.address_key],
                                                                 args=args))
        if reply is None:  # fail open
            return attempt
        if int(reply[0]) == 1:
            attempt.reserved = True
            return attempt
        _, which, wait, limit = reply
        raise self._refusal(SCOPE_EMAIL if int(which) == 1 else SCOPE_ADDRESS, float(wait), int(limit))

    @staticmethod
    def _refusal(scope: str, wait: float, limit: int) -> ApiError:
        from api.limits import tier_of_caller

        retry_after = max(1, math.ceil(wait))
        metrics.RATE_LIMITED.labels(scope, tier_of_caller()).inc()
        headers = {"Retry-After": str(retry_after), "X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0",
                   "X-RateLimit-Reset": str(math.ceil(time.time() + wait))}
        what = "this account" if scope == SCOPE_EMAIL else "this address"
        return ApiError(429, "RATE_LIMITED", f"Too many failed logins for {what}; retry in {retry_after} s.",
                        headers=headers)
