"""``make demo``: a running dev stack with people and money in it, and the commands to try.

:func:`seed` goes through the same doors a real deployment has: the admin comes from
the ``create-admin`` CLI (``api/cli.py``), everyone else registers and logs in over
HTTP, the admin gives roles over HTTP, the creator publishes content and a plan over
HTTP, and the fans are funded by the payment provider's HMAC-signed top-up webhook,
settled by the workers like any other job. Nothing is written to the store directly.

:data:`TRY_IT` is the one text of the "Try it" commands: the launcher prints it after
seeding, README.md's "Try it" block is the same text (a test compares the two), and
``tests/demo/test_try_it.py`` runs README's block against a real ``make demo`` stack.
The commands read everything from the variables :func:`exports` prints, so the same
text works on any port.

Running it again on the same ``var/`` reuses the accounts (it logs in first and
registers only who is missing, so a second run trips no registration limit), does not
fund anyone twice (top-ups are idempotent on their provider id) and publishes one
more content item. Nothing depends on how long a web process caches a role: no
account makes a request with its own token before its role is set, and role changes
reach every web process at once anyway (``api/user_changes.py``).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PASSWORD = "purser-demo-password"  # every demo account's; development data only
DOMAIN = "demo.purser.test"  # RFC 2606 reserved: never someone's real address
CONTENT_TITLE = "Behind the scenes"
CONTENT_PRICE = 250  # 200 / 37.5 / 12.5: the split's largest remainder rule shows (200 / 38 / 12)
PLAN_PRICE = 500
PLAN_DAYS = 30
TOPUP = 1000  # what "Try it" tops up, in coins


@dataclass(frozen=True)
class Person:
    """One seeded account."""

    key: str  # the variable prefix in the printed exports: ADMIN, CREATOR, FAN, FAN2
    email: str
    role: str  # the role to end up with
    funding: int = 0  # coins topped up by the provider at seeding


PEOPLE = (
    Person("ADMIN", f"admin@{DOMAIN}", "admin"),
    Person("CREATOR", f"creator@{DOMAIN}", "creator"),
    # A premium fan (100 requests/minute) for trying things; a free one shows the tier (10/minute).
    Person("FAN", f"fan@{DOMAIN}", "premium", funding=5000),
    Person("FAN2", f"fan2@{DOMAIN}", "free", funding=2000),
)

# (what it shows, the command). Variables: see exports(). jq formats and picks the JSON.
TRY_IT: tuple[tuple[str, str], ...] = (
    ("1. Top up the fan: the payment provider's webhook, HMAC-signed (devstack.sign only signs)",
     "BODY=$(printf '{\"providerTxId\":\"try-%s\",\"userId\":\"%s\",\"amount\":" + str(TOPUP) + "}'"
     " \"$(date +%s)\" \"$FAN\")"),
    ("",
     "curl -sS \"$PURSER/api/payments/webhook\" -H 'Content-Type: application/json'"
     " -H \"X-Purser-Signature: $(.venv/bin/python -m devstack.sign \"$BODY\")\" -d \"$BODY\" | jq -c ."),
    ("2. Unlock the creator's content: 202 Accepted, a job (the same key again replays the answer)",
     "JOB=$(curl -sS \"$PURSER/api/premium/unlock\" -H \"Authorization: Bearer $FAN_TOKEN\""
     " -H \"Idempotency-Key: unlock-$CONTENT\" -H 'Content-Type: application/json'"
     " -d \"{\\\"contentId\\\": \\\"$CONTENT\\\"}\" | jq -r .jobId) && echo \"job $JOB\""),
    ("3. Follow the job until it settles (the server holds the answer up to 5 s): the split is in result",
     "curl -sS \"$PURSER/api/jobs/$JOB\" -H \"Authorization: Bearer $FAN_TOKEN\" -H 'Prefer: wait=5'"
     " | jq '{status, result}'"),
    ("4. Both balances: the fan paid the price, the creator got the creator's share",
     "curl -sS \"$PURSER/api/wallet/balance\" -H \"Authorization: Bearer $FAN_TOKEN\" | jq -c ."),
    ("",
     "curl -sS \"$PURSER/api/wallet/balance\" -H \"Authorization: Bearer $CREATOR_TOKEN\" | jq -c ."),
    ("5. The settlement tasks in Flower (or open $FLOWER in a browser, user:password in $FLOWER_AUTH)",
     "curl -sS -u \"$FLOWER_AUTH\" \"$FLOWER/api/tasks?taskname=ledger.settle&limit=3\""
     " | jq -c 'map_values({state, worker})'"),
)


def try_it_text() -> str:
    """The "Try it" commands as README shows them: comment lines, then each command on one line."""
    lines: list[str] = []
    for title, command in TRY_IT:
        if title:
            lines.append(f"# {title}")
        lines.append(command)
    return "\n".join(lines)


def try_it_commands(text: str) -> list[str]:
    """The commands of a "Try it" block (comments and blank lines dropped, one command a line)."""
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


# --- HTTP --------------------------------------------------------------------------------


class DemoError(RuntimeError):
    """Seeding could not finish; the message says which step and what the API answered."""


@dataclass
class Answer:
    status: int
    body: Any


def _call(base_url: str, method: str, path: str, body: Any = None, token: str | None = None,
          headers: Mapping[str, str] | None = None, raw: bytes | None = None, timeout: float = 30) -> Answer:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"{base_url}{path}", data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = payload.decode("utf-8", "replace")
    return Answer(status, parsed)


def _expect(answer: Answer, step: str, *statuses: int) -> Any:
    if answer.status not in statuses:
        raise DemoError(f"{step}: HTTP {answer.status}: {answer.body}")
    return answer.body


# --- seeding -----------------------------------------------------------------------------


@dataclass
class Seeded:
    user_id: str
    token: str
    person: Person
    balance: int = 0


@dataclass
class Demo:
    """What :func:`seed` made: accounts with tokens, the content, and where things are."""

    base_url: str
    flower_url: str
    flower_auth: str
    var_dir: Path
    people: dict[str, Seeded] = field(default_factory=dict)
    content_id: str = ""
    split: dict[str, int] = field(default_factory=dict)

    def exports(self) -> dict[str, str]:
        """The variables the "Try it" commands read."""
        values = {"PURSER": self.base_url, "FLOWER": self.flower_url, "FLOWER_AUTH": self.flower_auth,
                  "PURSER_VAR_DIR": str(self.var_dir)}
        for key, seeded in self.people.items():
            values[key] = seeded.user_id
            values[f"{key}_TOKEN"] = seeded.token
        values["CONTENT"] = self.content_id
        return values


def wait_ready(base_url: str, timeout: float = 90.0) -> None:
    """Until ``/api/health/ready`` says 200 (stores up and a ledger worker consuming)."""
    deadline = time.monotonic() + timeout
    last: Answer | None = None
    while time.monotonic() < deadline:
        try:
            last = _call(base_url, "GET", "/api/health/ready", timeout=3)
            if last.status == 200:
                return
        except (urllib.error.URLError, OSError) as exc:
            last = Answer(0, str(exc))
        time.sleep(0.5)
    raise DemoError(f"the stack was not ready after {timeout:.0f} s: {last.body if last else 'no answer'}")


def create_admin(email: str, env: Mapping[str, str]) -> None:
    """The documented way to make the first admin: ``flask --app api create-admin``."""
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "api", "create-admin", "--email", email, "--password", "-"],
        input=PASSWORD + "\n", env=dict(env), cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise DemoError(f"create-admin failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}")


def login(base_url: str, email: str) -> Answer:
    return _call(base_url, "POST", "/api/auth/login", {"email": email, "password": PASSWORD})


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a token the API just issued to us (who and which role; not a verification)."""
    import jwt

    return jwt.decode(token, options={"verify_signature": False})


def login_or_register(base_url: str, person: Person) -> tuple[str, str, str]:
    """(user id, token, stored role): logged in, or registered first when no earlier demo did.

    Logging in first keeps a second run from registering (a 409 counts against the
    registration limit); the id and role come from the token itself, so nothing reads
    the account with its own token before its role is set: no web process can hold a
    stale role for it (``seed``).
    """
    answer = login(base_url, person.email)
    if answer.status == 401:
        registered = _call(base_url, "POST", "/api/auth/register",
                           {"email": person.email, "password": PASSWORD, "displayName": person.key.title()})
        if registered.status == 409:
            raise DemoError(f"{person.email} exists but does not take the demo password: "
                            "use another PURSER_VAR_DIR, or `make clean` to start over")
        _expect(registered, f"register {person.email}", 201)
        answer = login(base_url, person.email)
    token = _expect(answer, f"log in {person.email}", 200)["accessToken"]
    claims = token_claims(token)
    return claims["sub"], token, claims["role"]


def wait_job(base_url: str, token: str, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The job once settled; a failed job or a timeout is a :class:`DemoError`."""
    deadline = time.monotonic() + timeout
    while True:
        job = _expect(_call(base_url, "GET", f"/api/jobs/{job_id}", token=token, headers={"Prefer": "wait=5"},
                            timeout=20), f"read job {job_id}", 200)
        if job["status"] == "settled":
            return job
        if job["status"] == "failed" or time.monotonic() > deadline:
            raise DemoError(f"job {job_id} did not settle: {job}")


def topup(base_url: str, env: Mapping[str, str], user_id: str, amount: int, provider_tx_id: str) -> str:
    """A top-up exactly as the provider sends it (signed raw body); the job id."""
    from devstack.sign import signature

    raw = json.dumps({"providerTxId": provider_tx_id, "userId": user_id, "amount": amount})
    answer = _call(base_url, "POST", "/api/payments/webhook", raw=raw.encode(),
                   headers={"X-Purser-Signature": signature(raw, env)})
    return _expect(answer, f"top up {user_id}", 202)["jobId"]


def seed(base_url: str, env: Mapping[str, str], *, flower_url: str = "", ready_timeout: float = 90.0) -> Demo:
    """Seed the demo accounts, content, plan and funding through the API of the stack at ``base_url``.

    ``env`` is the stack's environment (store URLs, ``PURSER_VAR_DIR``, secrets): the
    admin CLI runs with it and the top-ups are signed with its webhook secret.
    """
    base_url = base_url.rstrip("/")
    wait_ready(base_url, ready_timeout)
    var_dir = Path(env.get("PURSER_VAR_DIR") or ROOT / "var").absolute()
    demo = Demo(base_url, flower_url, env.get("FLOWER_BASIC_AUTH", ""), var_dir)

    admin = next(p for p in PEOPLE if p.role == "admin")
    create_admin(admin.email, env)
    admin_token = _expect(login(base_url, admin.email), "log in the admin", 200)["accessToken"]
    demo.people[admin.key] = Seeded(token_claims(admin_token)["sub"], admin_token, admin)

    for person in PEOPLE:
        if person.role == "admin":
            continue
        user_id, token, role = login_or_register(base_url, person)
        if role != person.role:
            _expect(_call(base_url, "PATCH", f"/api/admin/users/{user_id}", {"role": person.role},
                          token=admin_token), f"make {person.email} {person.role}", 200)
            # A token names the role it was issued for; the new role deserves a fresh one.
            token = _expect(login(base_url, person.email), f"log in {person.email} again", 200)["accessToken"]
        demo.people[person.key] = Seeded(user_id, token, person)

    creator = demo.people["CREATOR"]
    content = _expect(_call(base_url, "POST", "/api/premium/content",
                            {"title": CONTENT_TITLE, "price": CONTENT_PRICE}, token=creator.token),
                      "publish the content", 201)
    demo.content_id = content["contentId"]
    _expect(_call(base_url, "PUT", "/api/subscription/plan", {"price": PLAN_PRICE, "periodDays": PLAN_DAYS},
                  token=creator.token), "set the plan", 200)

    # One provider id per fan: a second `make demo` replays the top-up instead of paying again.
    jobs = [topup(base_url, env, s.user_id, s.person.funding, f"demo-seed-{s.user_id}")
            for s in demo.people.values() if s.person.funding]
    for job_id in jobs:
        wait_job(base_url, admin_token, job_id)  # admins read any job and are not rate-limited
    for seeded in demo.people.values():
        if seeded.person.role != "admin":
            seeded.balance = _expect(_call(base_url, "GET", "/api/wallet/balance", token=seeded.token),
                                     f"balance of {seeded.person.email}", 200)["balance"]
    from ledger.splits import rule_for, split

    rule = rule_for("unlock")
    demo.split = split(CONTENT_PRICE, rule) if rule else {}
    return demo


# --- what the launcher prints --------------------------------------------------------------


def exports(demo: Demo) -> list[str]:
    """``export NAME=value`` lines, quoted for sh, to paste into another terminal."""
    values = demo.exports()
    groups = [("PURSER", "FLOWER", "FLOWER_AUTH", "PURSER_VAR_DIR"), ("CONTENT",)]
    groups[1:1] = [(key, f"{key}_TOKEN") for key in demo.people]
    return ["export " + " ".join(f"{name}={shlex.quote(values[name])}" for name in group) for group in groups]


def write_env_file(demo: Demo) -> Path:
    """``var/demo.env``: the exports, for ``. var/demo.env`` (owner-only: it holds tokens)."""
    path = demo.var_dir / "demo.env"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("\n".join(exports(demo)) + "\n")
    return path


READY_MARK = "devstack: demo ready"


def report(demo: Demo, env_file: Path | None = None) -> str:
    """The block printed after seeding: who is who, the exports, then the "Try it" commands."""
    rule = "=" * 78
    lines = [rule, f"  Demo data   (every account's password: {PASSWORD})"]
    for key, seeded in demo.people.items():
        money = "" if seeded.person.role == "admin" else f"   balance {seeded.balance}"
        lines.append(f"  {key.lower():<8} {seeded.person.email:<26} {seeded.person.role:<8} {seeded.user_id}{money}")
    parts = " / ".join(f"{party} {coins}" for party, coins in demo.split.items())
    lines += [
        f"  content  {demo.content_id}  \"{CONTENT_TITLE}\", price {CONTENT_PRICE}  (unlock split: {parts})",
        f"  plan     {PLAN_PRICE} coins every {PLAN_DAYS} days",
        f"  Flower   {demo.flower_url}   ({demo.flower_auth})",
        "",
        "  In another terminal at the repository root, paste"
        + (f" (or: . {_shown(env_file)})" if env_file else "") + ":",
        "",
        *exports(demo),
        "",
        "  then try it (README.md, \"Try it\"; needs curl and jq):",
        "",
        try_it_text(),
        rule,
        READY_MARK,
    ]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
