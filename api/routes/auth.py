"""Registration, login and the caller's profile."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from api import auth as tokens
from api.app_settings import settings
from api.errors import ApiError
from api.jsonbody import parse_body
from api.limits import client_address
from api.login_throttle import LoginThrottle
from api.request_schemas import LoginIn, RegisterIn
from api.response_schemas import MeOut, TokenOut, UserOut
from api.spec import Link, endpoint
from services import accounts, users
from services.store import process_db

bp = Blueprint("auth", __name__, url_prefix="/api")


def _throttle() -> LoginThrottle:
    return current_app.extensions["purser_login_throttle"]  # installed by create_app


def _busy() -> ApiError:
    return ApiError(503, "SERVICE_UNAVAILABLE", "Too many logins in progress; retry shortly.",
                    headers={"Retry-After": "1"})


def throttled_login(email: str, password: str) -> dict[str, Any]:
    """The account with these credentials, or 401/429/503: the API's and the console's login.

    Failed attempts are throttled per e-mail and per address (api/login_throttle.py);
    successful ones are not counted.
    """
    attempt = _throttle().reserve(users.normalise_email(email), client_address())
    try:
        user = accounts.login(process_db(), email, password, settings=settings())
    except users.HashingBusy:
        attempt.release()
        raise _busy() from None
    except BaseException:
        attempt.release()
        raise
    if user is None:
        attempt.failed()
        raise ApiError(401, "INVALID_CREDENTIALS", "Email or password is wrong.")
    attempt.succeeded()
    return user


@endpoint(bp, "POST", "/auth/register", summary="Create an account (role free) and its wallet",
          body=RegisterIn, response=UserOut, status=201, errors={409: "EMAIL_TAKEN", 503: "SERVICE_UNAVAILABLE"},
          auth_required=False,
          links={"Login": Link("auth.login", "Log in with the new account",
                               body={"email": "$request.body#/email", "password": "$request.body#/password"}),
                 "Transfer": Link("wallet.transfer", "Send the new user coins",
                                  body={"receiverId": "$response.body#/userId"}),
                 "Gift": Link("gifts.gift", "Send the new user a gift", body={"creatorId": "$response.body#/userId"}),
                 "Credit": Link("admin.credit", "Credit the new user's wallet (admin)",
                                body={"userId": "$response.body#/userId"})})
def register() -> Any:
    body = parse_body(RegisterIn)
    try:
        user = accounts.register(process_db(), body.email, body.password, body.displayName, settings=settings())
    except users.EmailTaken:
        raise ApiError(409, "EMAIL_TAKEN", "An account with this email already exists.") from None
    except users.HashingBusy:
        raise _busy() from None
    return jsonify(users.user_view(user)), 201


@endpoint(bp, "POST", "/auth/login", summary="Exchange email and password for a bearer token",
          body=LoginIn, response=TokenOut, auth_required=False,
          errors={401: "INVALID_CREDENTIALS", 429: "RATE_LIMITED", 503: "SERVICE_UNAVAILABLE"})
def login() -> Any:
    body = parse_body(LoginIn)
    user = throttled_login(body.email, body.password)
    token, ttl = tokens.issue_token(settings(), user["_id"], user["role"])
    return jsonify(accessToken=token, tokenType="Bearer", expiresIn=ttl)


@endpoint(bp, "GET", "/me", summary="The caller's profile", response=MeOut)
def me() -> Any:
    user = accounts.profile(process_db(), tokens.current().user_id)
    if user is None:
        raise ApiError(401, "UNAUTHORIZED", "The account no longer exists.")
    return jsonify(**users.user_view(user), walletId=user["_id"], displayName=user.get("displayName"))
