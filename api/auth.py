"""JWT bearer authentication (HS256, algorithm pinned on verify) and the stored role.

The token proves who the caller is; what the caller may do comes from the role
stored in the ``users`` collection, read through a small per-process cache
(:func:`stored_role`, ``ROLE_CACHE_SECONDS``, at most 5 s). The request hook in
``api/__init__.py`` builds ``g.principal`` with that stored role, so every
authorization decision and the rate limiter's admin exemption follow a demotion
however long the token still runs: at once in every web process when the change's
invalidation arrives over Redis (``api/user_changes.py``), within the cache time when
Redis is away. Authorization lives here
only: ``api/spec.py`` calls :func:`require_roles` for the roles an endpoint declares,
routes call :func:`still_admin` for admin-only reads of other users' data.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import jwt
from cachetools import LRUCache
from flask import g, request

from api.app_settings import settings
from api.errors import ApiError
from infra import metrics
from infra.config import Settings
from ledger.money import is_user_id
from ledger.states import Role
from services import accounts
from services.store import StoreError, process_db

log = logging.getLogger("purser.auth")

ALGORITHM = "HS256"
ROLE_CACHE_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN


def issue_token(settings: Settings, user_id: str, role: str) -> tuple[str, int]:
    now = int(time.time())
    ttl = settings.jwt_ttl_seconds
    claims = {"sub": user_id, "role": role, "iat": now, "exp": now + ttl, "iss": settings.jwt_issuer}
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM), ttl


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", detail, headers={"WWW-Authenticate": 'Bearer realm="purser"'})


# Verified tokens, per process: a returning caller's token is checked once (HMAC, JSON,
# claims: about a twentieth of an accepted request's web CPU, loadtest/web_profile.py),
# then its expiry alone on every request. There is no revocation of bearer tokens to
# miss (the stored role is what authorizes); the key holds the secret and issuer, so a
# rotated secret finds nothing. Bounded (LRU) and positive only: a bad token is
# verified, and refused, every time.
VERIFIED_TOKENS_MAX = 10_000
LEEWAY_SECONDS = 5
_verified: LRUCache[tuple[str, str, str], tuple[Principal, int]] = LRUCache(maxsize=VERIFIED_TOKENS_MAX)
_verified_lock = threading.Lock()


def decode_token(settings: Settings, token: str) -> Principal:
    """The principal of a valid, unexpired ``token``; 401 otherwise."""
    key = (settings.jwt_secret, settings.jwt_issuer, token)
    with _verified_lock:
        cached = _verified.get(key)
    if cached is not None:
        metrics.record_cache_lookup("verified_tokens", hit=True)
        if time.time() > cached[1] + LEEWAY_SECONDS:  # what jwt.decode would say now
            raise _unauthorized("The token has expired.")
        return cached[0]
    metrics.record_cache_lookup("verified_tokens", hit=False)
    principal, expires = _verify(settings, token)
    with _verified_lock:
        _verified[key] = (principal, expires)
    return principal


def _verify(settings: Settings, token: str) -> tuple[Principal, int]:
    try:
        claims = jwt.decode(token, settings.jwt_secret, algorithms=[ALGORITHM], issuer=settings.jwt_issuer,
                            options={"require": ["sub", "role", "iat", "exp", "iss"]}, leeway=LEEWAY_SECONDS)
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The token has expired.") from None
    except jwt.PyJWTError:
        raise _unauthorized("The token is invalid.") from None
    sub = claims.get("sub")
    try:
        role = Role(claims.get("role"))
    except ValueError:
        raise _unauthorized("The token is invalid.") from None
    if not is_user_id(sub):
        raise _unauthorized("The token is invalid.")
    return Principal(sub, role), int(claims["exp"])


def bearer_principal(settings: Settings) -> Principal | None:
    """The caller from the Authorization header, or None when absent."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Use 'Authorization: Bearer <token>'.")
    return decode_token(settings, token.strip())


class RoleCache:
    """Stored roles by user id for up to ``ttl`` seconds, per process, thread-safe.

    ``None`` (no such user, or an account that is not active) is cached too, so a
    token of a deleted account cannot make every request read MongoDB.

    ``epoch`` moves on every :meth:`forget` and :meth:`clear`: a role read from the
    store before an invalidation arrived may be the old one, so :meth:`put` with the
    epoch seen before that read stores nothing (``api/user_changes.py``).
    """

    def __init__(self, max_entries: int = ROLE_CACHE_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str | None, float]] = {}
        self.epoch = 0

    def get(self, user_id: str, ttl: float) -> tuple[bool, str | None]:
        """``(hit, role)``: a hit is an entry younger than ``ttl`` seconds."""
        if ttl <= 0:
            return False, None
        with self._lock:
            entry = self._entries.get(user_id)
        if entry is not None and time.monotonic() - entry[1] < ttl:
            return True, entry[0]
        return False, None

    def put(self, user_id: str, role: str | None, ttl: float, epoch: int | None = None) -> None:
        if ttl <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if epoch is not None and epoch != self.epoch:
                return
            if len(self._entries) >= self.max_entries and user_id not in self._entries:
                self._entries = {k: v for k, v in self._entries.items() if now - v[1] < ttl}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[user_id] = (role, now)

    def forget(self, user_id: str) -> None:
        with self._lock:
            self.epoch += 1
            self._entries.pop(user_id, None)

    def clear(self) -> None:
        with self._lock:
            self.epoch += 1
            self._entries.clear()


ROLE_CACHE = RoleCache()


def load_stored_role(user_id: str) -> Role | None:
    """The role stored for ``user_id``, or None (no such user, account not active, unknown role)."""
    return accounts.stored_role(process_db(), user_id)


def stored_role(user_id: str, ttl: float) -> Role | None:
    """The stored role of ``user_id``, at most ``ttl`` seconds old (0: always read)."""
    hit, role = ROLE_CACHE.get(user_id, ttl)
    if hit:
        return role
    epoch = ROLE_CACHE.epoch
    role = load_stored_role(user_id)
    ROLE_CACHE.put(user_id, role, ttl, epoch)
    return role


def forget_role(user_id: str) -> None:
    """Drop the cached role of ``user_id`` in this process (every process: ``api.user_changes.announce``)."""
    ROLE_CACHE.forget(user_id)


def forget_all_roles() -> None:
    """Drop every cached role in this process (invalidations may have been missed)."""
    ROLE_CACHE.clear()


def with_stored_role(settings: Settings, principal: Principal) -> Principal:
    """``principal`` with the stored role instead of the token's claim.

    An account that no longer exists (or is not active) is 401; a store that cannot
    be read is 503, never a fall back to the token's role.
    """
    try:
        role = stored_role(principal.user_id, settings.role_cache_seconds)
    except StoreError as exc:
        log.warning("could not read the caller's stored role", extra={"error": type(exc).__name__})
        raise ApiError(503, "SERVICE_UNAVAILABLE", "A dependency is unavailable; retry shortly.",
                       headers={"Retry-After": "2"}) from None
    if role is None:
        raise _unauthorized("The account no longer exists.")
    return principal if role == principal.role else Principal(principal.user_id, role)


def request_principal(settings: Settings) -> Principal | None:
    """The caller of this request with the stored role, or None when anonymous."""
    principal = bearer_principal(settings)
    return with_stored_role(settings, principal) if principal is not None else None


def current() -> Principal:
    principal = getattr(g, "principal", None)
    if principal is None:
        error = getattr(g, "auth_error", None)
        raise error if error is not None else _unauthorized("Authentication required.")
    return principal


def require_roles(principal: Principal, roles: tuple[Role, ...] | None) -> None:
    if roles and principal.role not in roles:
        raise ApiError(403, "FORBIDDEN", "Your role does not allow this action.")


def still_admin(principal: Principal, ttl: float | None = None) -> bool:
    """True when ``principal`` is an admin by the role stored now (read through the cache).

    For routes that show admins other users' data: a demoted admin's unexpired token
    must not keep reading it. A missing account is 401. ``ttl`` defaults to the app's
    role cache setting.
    """
    if not principal.is_admin:
        return False
    if ttl is None:
        ttl = settings().role_cache_seconds
    role = stored_role(principal.user_id, ttl)
    if role is None:
        raise ApiError(401, "UNAUTHORIZED", "The account no longer exists.")
    return role == Role.ADMIN
