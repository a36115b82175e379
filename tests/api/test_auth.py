"""Registration, login, profile, roles, the create-admin CLI and token attacks."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid

import jwt
import pytest

from tests.api.helpers import PASSWORD, UNKNOWN_ID, Api, assert_problem, mint_token
from tests.support.env import ROOT, TEST_JWT_SECRET


def _email() -> str:
    return f"a{uuid.uuid4().hex[:12]}@example.com"


def _register(api: Api, body: dict) -> object:
    return api.client.request("POST", "/api/auth/register", json_body=body)


def _login(api: Api, email: str, password: str) -> object:
    return api.client.request("POST", "/api/auth/login", json_body={"email": email, "password": password})


def test_register_creates_free_user_with_wallet_and_argon2id_hash(api):
    email = _email()
    r = _register(api, {"email": email, "password": PASSWORD, "displayName": "Ada"})
    assert r.status == 201, r
    assert set(r.json) == {"userId", "email", "role"}
    assert r.json["email"] == email and r.json["role"] == "free"
    user_id = r.json["userId"]
    stored = api.db.users.find_one({"_id": user_id})
    assert stored["passwordHash"].startswith("$argon2id$")
    assert PASSWORD not in json.dumps(stored, default=str)
    wallet = api.db.wallets.find_one({"_id": user_id})
    assert wallet["userId"] == user_id and wallet["balance"] == 0 and wallet["status"] == "active"


def test_duplicate_email_is_refused_case_insensitively(api):
    email = _email()
    assert _register(api, {"email": email, "password": PASSWORD}).status == 201
    for again in (email, email.upper(), f"  {email}  "):
        assert_problem(_register(api, {"email": again, "password": PASSWORD}), 409, "EMAIL_TAKEN")
    assert api.db.users.count_documents({}) == 1


def test_role_escalation_through_register_is_refused(api):
    for body in ({"role": "admin"}, {"role": "free"}, {"isAdmin": True}):
        r = _register(api, {"email": _email(), "password": PASSWORD, **body})
        problem = assert_problem(r, 422, "VALIDATION_FAILED")
        assert any(e["type"] == "extra_forbidden" for e in problem["errors"]), (body, problem)
    assert api.db.users.count_documents({}) == 0


def test_register_validates_its_body(api):
    for body in ({"email": "not-an-email", "password": PASSWORD}, {"email": "x@example.com", "password": "short7!"},
                 {"email": "x@example.com"}, {"password": PASSWORD},
                 {"email": "x@example.com", "password": PASSWORD, "displayName": ""},
                 {"email": ["x@example.com"], "password": PASSWORD}):
        assert_problem(_register(api, body), 422, "VALIDATION_FAILED")
    assert api.db.users.count_documents({}) == 0


def test_login_issues_pinned_hs256_token_with_contract_claims(api):
    email = _email()
    user_id = _register(api, {"email": email, "password": PASSWORD}).json["userId"]
    r = _login(api, email.upper(), PASSWORD)
    assert r.status == 200, r
    assert r.json["tokenType"] == "Bearer" and isinstance(r.json["expiresIn"], int) and r.json["expiresIn"] > 0
    token = r.json["accessToken"]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"], issuer="purser")
    assert claims["sub"] == user_id and claims["role"] == "free"
    assert claims["exp"] - claims["iat"] == r.json["expiresIn"]
    me = api.client.request("GET", "/api/me", token=token)
    assert me.status == 200, me
    assert me.json == {"userId": user_id, "email": email, "role": "free", "walletId": user_id,
                       "displayName": None}


def test_invalid_credentials_do_not_reveal_whether_the_email_exists(api):
    email = _email()
    _register(api, {"email": email, "password": PASSWORD})
    wrong_password = assert_problem(_login(api, email, PASSWORD + "x"), 401, "INVALID_CREDENTIALS")
    unknown_email = assert_problem(_login(api, _email(), PASSWORD), 401, "INVALID_CREDENTIALS")
    for body in (wrong_password, unknown_email):
        body.pop("requestId")
    assert wrong_password == unknown_email


def test_role_escalation_through_login_is_refused(api):
    email = _email()
    _register(api, {"email": email, "password": PASSWORD})
    r = api.client.request("POST", "/api/auth/login", json_body={"email": email, "password": PASSWORD,
                                                                 "role": "admin"})
    assert_problem(r, 422, "VALIDATION_FAILED")
    token = _login(api, email, PASSWORD).json["accessToken"]
    assert jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"], issuer="purser")["role"] == "free"


def test_me_requires_a_token(api):
    r = api.get("/api/me")
    assert_problem(r, 401, "UNAUTHORIZED")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


# --- token attacks ------------------------------------------------------------------


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def _claims(user_id: str, role: str = "free", **changes: object) -> dict:
    now = int(time.time())
    claims = {"sub": user_id, "role": role, "iat": now, "exp": now + 600, "iss": "purser"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _attack_tokens(user_id: str, genuine: str) -> dict[str, str]:
    now = int(time.time())
    header, _, signature = genuine.split(".")
    tampered_payload = jwt.decode(genuine, options={"verify_signature": False}) | {"role": "admin"}
    return {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(user_id, 'admin'))}.",
        "alg none (PyJWT)": jwt.encode(_claims(user_id, "admin"), None, algorithm="none"),
        "wrong secret": jwt.encode(_claims(user_id, "admin"), "x" * 48, algorithm="HS256"),
        "HS512 with the real secret": jwt.encode(_claims(user_id), TEST_JWT_SECRET, algorithm="HS512"),
        "expired": jwt.encode(_claims(user_id, iat=now - 7200, exp=now - 3600), TEST_JWT_SECRET),
        "missing sub": jwt.encode(_claims(user_id, sub=None), TEST_JWT_SECRET),
        "missing exp": jwt.encode(_claims(user_id, exp=None), TEST_JWT_SECRET),
        "wrong issuer": jwt.encode(_claims(user_id, iss="evil"), TEST_JWT_SECRET),
        "system account as sub": jwt.encode(_claims("external:funding"), TEST_JWT_SECRET),
        "unknown role": jwt.encode(_claims(user_id, "root"), TEST_JWT_SECRET),
        "tampered role claim": f"{header}.{_b64(tampered_payload)}.{signature}",
        "garbage": "not.a.jwt",
    }


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_forged_and_broken_tokens_get_401(api):
    user = api.user()
    admin = api.user("admin")
    genuine = mint_token(user.id, "free")
    for name, token in _attack_tokens(user.id, genuine).items():
        for method, path in (("GET", "/api/me"), ("GET", "/api/wallet/balance"),
                             ("POST", f"/api/admin/wallets/{admin.id}/freeze")):
            r = api.client.request(method, path, token=token)
            assert r.status == 401, (name, path, r)
            assert_problem(r, 401, "UNAUTHORIZED")
    for header in ("Basic dXNlcjpwYXNz", "Bearer", f"Token {genuine}"):
        assert_problem(api.get("/api/me", headers={"Authorization": header}), 401, "UNAUTHORIZED")
    assert api.db.wallets.find_one({"_id": admin.id})["status"] == "active"


def test_a_verified_token_is_remembered_but_its_expiry_is_checked_every_time(api, monkeypatch):
    """Issue 24 lever 6: a returning token skips the HMAC, never the expiry or the secret."""
    import dataclasses

    from api import auth

    user = api.user()
    now = int(time.time())
    short = jwt.encode(_claims(user.id, iat=now, exp=now + 30), TEST_JWT_SECRET)
    auth._verified.clear()
    for _ in range(3):
        assert api.client.request("GET", "/api/me", token=short).status == 200
    assert len([k for k in auth._verified if k[2] == short]) == 1
    # The clock moves past exp + leeway: the remembered token is refused like a fresh one.
    real_time = time.time
    monkeypatch.setattr(auth.time, "time", lambda: real_time() + 30 + auth.LEEWAY_SECONDS + 1)
    assert_problem(api.client.request("GET", "/api/me", token=short), 401, "UNAUTHORIZED")
    monkeypatch.undo()
    # Another secret (a rotation) finds nothing remembered: the token is verified against it.
    from infra.config import get_settings
    rotated = dataclasses.replace(get_settings(), jwt_secret="y" * 48)
    with pytest.raises(auth.ApiError):
        auth.decode_token(rotated, short)


def test_signed_admin_claim_does_not_outrank_the_stored_role(api):
    """Even a validly signed token claiming admin is checked against the stored role on admin routes."""
    user = api.user()
    token = mint_token(user.id, "admin")
    r = api.client.request("PATCH", f"/api/admin/users/{user.id}", json_body={"role": "admin"}, token=token)
    assert_problem(r, 403, "FORBIDDEN")
    assert api.db.users.find_one({"_id": user.id})["role"] == "free"


# --- roles --------------------------------------------------------------------------


def test_admin_changes_roles_and_the_change_applies_immediately(api):
    admin, user = api.user("admin"), api.user()
    r = api.send("PATCH", f"/api/admin/users/{user.id}", admin, {"role": "creator"})
    assert r.status == 200, r
    assert r.json == {"userId": user.id, "email": user.email, "role": "creator"}
    assert api.get("/api/me", user).json["role"] == "creator"
    # The token still says "free"; the stored role decides privileged routes.
    r = api.send("POST", "/api/premium/content", user, {"title": "t", "price": 10})
    assert r.status == 201, r


def test_role_changes_are_admin_only_and_validated(api):
    admin, creator, user = api.user("admin"), api.user("creator"), api.user()
    for caller in (user, creator):
        r = api.send("PATCH", f"/api/admin/users/{user.id}", caller, {"role": "admin"})
        assert_problem(r, 403, "FORBIDDEN")
    assert_problem(api.send("PATCH", f"/api/admin/users/{user.id}", None, {"role": "admin"}), 401, "UNAUTHORIZED")
    assert_problem(api.send("PATCH", f"/api/admin/users/{UNKNOWN_ID}", admin, {"role": "premium"}),
                   404, "USER_NOT_FOUND")
    assert_problem(api.send("PATCH", "/api/admin/users/nope", admin, {"role": "premium"}), 404, "USER_NOT_FOUND")
    for bad in ({"role": "root"}, {"role": None}, {}, {"role": "premium", "email": "x@example.com"}):
        assert_problem(api.send("PATCH", f"/api/admin/users/{user.id}", admin, bad), 422, "VALIDATION_FAILED")
    assert api.db.users.find_one({"_id": user.id})["role"] == "free"


# --- create-admin CLI ---------------------------------------------------------------


def _create_admin(stack_env: dict[str, str], email: str, password: str, stdin: str | None = None):
    env = {**os.environ, **stack_env}
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "api", "create-admin", "--email", email, "--password", password],
        input=stdin, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def test_create_admin_cli_creates_and_promotes(api, stack_env):
    email, secret = _email(), "cli-admin-pass-1"
    done = _create_admin(stack_env, email, "-", stdin=secret + "\n")
    assert done.returncode == 0, done.stderr
    assert "created admin" in done.stdout
    token = _login(api, email, secret).json["accessToken"]
    assert jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"], issuer="purser")["role"] == "admin"
    stored = api.db.users.find_one({"email": email})
    assert stored["role"] == "admin" and stored["passwordHash"].startswith("$argon2id$")
    assert api.db.wallets.find_one({"_id": stored["_id"]}) is not None

    # An existing user is promoted; the password stays the user's own.
    user = api.user()
    done = _create_admin(stack_env, user.email.upper(), "ignored-password")
    assert done.returncode == 0, done.stderr
    assert "promoted" in done.stdout
    assert api.db.users.find_one({"_id": user.id})["role"] == "admin"
    assert _login(api, user.email, PASSWORD).status == 200

    short = _create_admin(stack_env, _email(), "-", stdin="short\n")
    assert short.returncode != 0 and "at least 8" in short.stderr


# --- password hashing (issue 15) ----------------------------------------------------


OWASP_PREFIX = "$argon2id$v=19$m=19456,t=2,p=1$"


def test_passwords_are_hashed_with_the_configured_owasp_minimum(api):
    email = _email()
    user_id = _register(api, {"email": email, "password": PASSWORD}).json["userId"]
    assert api.db.users.find_one({"_id": user_id})["passwordHash"].startswith(OWASP_PREFIX)


def test_login_rehashes_a_hash_made_with_other_parameters(api):
    from argon2 import PasswordHasher

    user = api.user()
    old = PasswordHasher(memory_cost=65536, time_cost=3, parallelism=4).hash(PASSWORD)  # the former defaults
    api.db.users.update_one({"_id": user.id}, {"$set": {"passwordHash": old}})
    # A wrong password proves nothing: the hash stays as it is.
    assert_problem(_login(api, user.email, PASSWORD + "x"), 401, "INVALID_CREDENTIALS")
    assert api.db.users.find_one({"_id": user.id})["passwordHash"] == old
    assert _login(api, user.email, PASSWORD).status == 200
    rehashed = api.db.users.find_one({"_id": user.id})["passwordHash"]
    assert rehashed != old and rehashed.startswith(OWASP_PREFIX)
    assert _login(api, user.email, PASSWORD).status == 200
    assert api.db.users.find_one({"_id": user.id})["passwordHash"] == rehashed  # no rehash when current


def test_concurrent_verifications_are_bounded_per_process(api, monkeypatch):
    import dataclasses
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from argon2 import PasswordHasher

    from infra.config import get_settings
    from services import users

    settings = dataclasses.replace(get_settings(), password_hash_concurrency=2)
    user = api.user()
    lock, active, peak = threading.Lock(), [0], [0]
    original = PasswordHasher.verify

    def counting_verify(self, hash, password):  # noqa: A002 - argon2's own parameter name
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.05)
            return original(self, hash, password)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(PasswordHasher, "verify", counting_verify)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: users.authenticate(api.db, user.email, PASSWORD, settings=settings),
                                range(16)))
    assert all(r is not None and r["_id"] == user.id for r in results)
    assert peak[0] == 2


def test_login_answers_503_when_no_hashing_slot_frees(api, monkeypatch):
    import threading

    from infra.config import get_settings
    from services import users

    user = api.user()
    monkeypatch.setattr(users, "HASH_WAIT_SECONDS", 0.2)
    holding, release = threading.Barrier(get_settings().password_hash_concurrency + 1), threading.Event()

    def hold() -> None:
        with users.hashing_slot(get_settings()):
            holding.wait()
            release.wait(10)

    threads = [threading.Thread(target=hold) for _ in range(get_settings().password_hash_concurrency)]
    for t in threads:
        t.start()
    try:
        holding.wait()
        r = _login(api, user.email, PASSWORD)
        assert_problem(r, 503, "SERVICE_UNAVAILABLE")
        assert r.headers["Retry-After"] == "1"
    finally:
        release.set()
        for t in threads:
            t.join()
    assert _login(api, user.email, PASSWORD).status == 200
