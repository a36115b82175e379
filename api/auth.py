"""JWT bearer authentication (HS256, algorithm pinned on verify)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt
from flask import g, request

from api.errors import ApiError
from infra.config import Settings
from ledger.money import is_user_id

ALGORITHM = "HS256"
_ROLES = {"free", "premium", "creator", "admin"}


@dataclass(frozen=True)
class Principal:
    user_id: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def issue_token(settings: Settings, user_id: str, role: str) -> tuple[str, int]:
    now = int(time.time())
    ttl = settings.jwt_ttl_seconds
    claims = {"sub": user_id, "role": role, "iat": now, "exp": now + ttl, "iss": settings.jwt_issuer}
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM), ttl


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "UNAUTHORIZED", detail, headers={"WWW-Authenticate": 'Bearer realm="purser"'})


def decode_token(settings: Settings, token: str) -> Principal:
    try:
        claims = jwt.decode(token, settings.jwt_secret, algorithms=[ALGORITHM], issuer=settings.jwt_issuer,
                            options={"require": ["sub", "role", "iat", "exp", "iss"]}, leeway=5)
    except jwt.ExpiredSignatureError:
        raise _unauthorized("The token has expired.") from None
    except jwt.PyJWTError:
        raise _unauthorized("The token is invalid.") from None
    sub, role = claims.get("sub"), claims.get("role")
    if not is_user_id(sub) or role not in _ROLES:
        raise _unauthorized("The token is invalid.")
    return Principal(sub, role)


def bearer_principal(settings: Settings) -> Principal | None:
    """The caller from the Authorization header, or None when absent."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("Use 'Authorization: Bearer <token>'.")
    return decode_token(settings, token.strip())


def current() -> Principal:
    principal = getattr(g, "principal", None)
    if principal is None:
        error = getattr(g, "auth_error", None)
        raise error if error is not None else _unauthorized("Authentication required.")
    return principal


def require_roles(principal: Principal, roles: tuple[str, ...] | None) -> None:
    if roles and principal.role not in roles:
        raise ApiError(403, "FORBIDDEN", "Your role does not allow this action.")
