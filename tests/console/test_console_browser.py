"""The operator console in a real headless Chromium against real gunicorn, workers and stores (issue 26).

The operator logs in, searches, opens a wallet, refunds an unlock through the form and
sees the balances move, freezes a wallet and sees a transfer refused, replays a failed
webhook delivery and logs out; logged-out, non-admin and cross-site requests are
refused; a hostile gift message shows as text and runs nothing; the overview's
figures equal what the store holds. Money is put in through the API (the provider's
signed top-up, the fans' own requests); the expected figures are read back from
MongoDB independently of the console's code.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from devstack.ports import free_port
from devstack.provider_sim import ProviderSimProcess
from services import console_sessions, contents
from tests.console.conftest import LOGIN_LIMIT, Stack
from tests.support.browser import Browser
from tests.support.env import ROOT
from tests.support.journal import ledger_record
from tests.support.seeding import PASSWORD, User, seed_users
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow

HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


# --- driving the browser --------------------------------------------------------------


def go(b: Browser, s: Stack, path: str) -> None:
    b.driver.get(s.base_url + path)


def login(b: Browser, s: Stack, email: str, password: str = PASSWORD) -> None:
    b.driver.delete_all_cookies()
    go(b, s, "/console/login")
    b.driver.find_element(By.ID, "email").send_keys(email)
    b.driver.find_element(By.ID, "password").send_keys(password)
    b.driver.find_element(By.ID, "login").click()
    # The next page (the overview, or the form again with its refusal) before anything else is driven.
    WebDriverWait(b.driver, 15).until(lambda d: d.find_elements(By.ID, "live") or d.find_elements(By.ID, "login-error"))


def figure(b: Browser, name: str) -> str:
    return b.driver.find_element(By.CSS_SELECTOR, f'[data-figure="{name}"]').text.strip()


def act(b: Browser, button: str, reason: str | None = None, confirm: bool = False) -> None:
    """Fill an action form's reason and press its button (accepting the confirmation)."""
    if reason is not None:
        b.driver.find_element(By.ID, f"{button}-reason").send_keys(reason)
    b.driver.find_element(By.ID, button).click()
    if confirm:
        WebDriverWait(b.driver, 5).until(expected_conditions.alert_is_present()).accept()
    WebDriverWait(b.driver, 10).until(lambda d: d.find_elements(By.ID, "notice") or d.find_elements(By.ID, "error"))


def notice(b: Browser) -> str:
    found = b.driver.find_elements(By.ID, "notice")
    if not found:
        raise AssertionError(b.driver.find_element(By.ID, "error").text)
    return found[0].text


def until_figure(b: Browser, name: str, expected: str, timeout: float = 20) -> None:
    """Reload until the page shows ``expected`` for ``name`` (a job settling, a credit applied)."""
    def probe() -> bool:
        b.driver.refresh()
        return figure(b, name) == expected
    wait_for(probe, timeout, poll=0.3, what=f"{name} = {expected} on {b.driver.current_url}")


# --- putting money in through the API ------------------------------------------------------


def fund(s: Stack, user: User, amount: int) -> str:
    r = s.http.webhook(user.id, amount)
    assert r.status == 202, r
    assert s.http.wait_job(s.admin, r.json["jobId"])["status"] == "settled"
    return r.json["jobId"]


def settled(s: Stack, who: User, path: str, body: dict[str, Any], status: str = "settled") -> dict[str, Any]:
    r = s.http.money(path, who, body)
    assert r.status == 202, r
    job = s.http.wait_job(who, r.json["jobId"])
    assert job["status"] == status, job
    return job


def balance(s: Stack, user_id: str) -> int:
    """Balance plus credits in flight, from the store (the console shows both)."""
    wallet = s.db.wallets.find_one({"_id": user_id})
    incoming = sum(row["amount"] for c in s.db.credits.find({"applied": False}) for row in c["amounts"]
                   if row["walletId"] == user_id)
    return wallet["balance"] + incoming


# --- a second client with the browser's session (for what a browser cannot show) --------


def with_session(b: Browser) -> requests.Session:
    http = requests.Session()
    for cookie in b.driver.get_cookies():
        http.cookies.set(cookie["name"], cookie["value"])
    return http


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} in the page"
    return match.group(1)


# --- the tests -------------------------------------------------------------------------------


def test_logged_out_and_non_admin_browsers_are_refused(stack: Stack, browser: Browser) -> None:
    s, b = stack, browser
    fan = seed_users(s.db, 1, prefix="outsider")[0]
    b.driver.delete_all_cookies()
    go(b, s, f"/console/wallets/{fan.id}")
    assert "/console/login" in b.driver.current_url and b.driver.find_element(By.ID, "login")

    login(b, s, fan.email)
    assert "FORBIDDEN" in b.driver.find_element(By.ID, "login-error").text
    assert not [c for c in b.driver.get_cookies() if c["name"] == "purser-console"], "no session for a non-admin"

    r = requests.post(f"{s.base_url}/console/wallets/{fan.id}/freeze", data={"reason": "no session"},
                      headers={"Accept": "application/json"}, allow_redirects=False, timeout=10)
    assert r.status_code == 401 and r.headers["Content-Type"] == "application/problem+json"
    assert r.json()["code"] == "UNAUTHORIZED"
    assert s.db.wallets.find_one({"_id": fan.id})["status"] == "active"


def test_failed_console_logins_are_throttled_like_the_api(stack: Stack) -> None:
    s = stack
    http = requests.Session()
    email = seed_users(s.db, 1, prefix="guessed")[0].email
    statuses = []
    for _ in range(LOGIN_LIMIT + 1):
        page = http.get(f"{s.base_url}/console/login", timeout=10).text
        r = http.post(f"{s.base_url}/console/login", timeout=10, allow_redirects=False,
                      data={"csrf_token": hidden(page, "csrf_token"), "email": email, "password": "wrong-password"})
        statuses.append(r.status_code)
    assert statuses == [401] * LOGIN_LIMIT + [429], statuses
    assert "RATE_LIMITED" in r.text and int(r.headers["Retry-After"]) > 0
    # Locked out even with the right password, like POST /api/auth/login.
    page = http.get(f"{s.base_url}/console/login", timeout=10).text
    r = http.post(f"{s.base_url}/console/login", data={"csrf_token": hidden(page, "csrf_token"), "email": email,
                                                       "password": PASSWORD}, timeout=10, allow_redirects=False)
    assert r.status_code == 429


def test_operator_finds_a_fan_and_refunds_an_unlock_through_the_form(stack: Stack, browser: Browser) -> None:
    s, b = stack, browser
    fan, creator = seed_users(s.db, 1, prefix="refundfan")[0], seed_users(s.db, 1, role="creator")[0]
    fund(s, fan, 1000)
    content = contents.publish(s.db, creator.id, "A premium post", 250)
    unlock = settled(s, fan, "/api/premium/unlock", {"contentId": content["_id"]})
    fan_before, creator_before = balance(s, fan.id), balance(s, creator.id)
    assert (fan_before, creator_before) == (750, 200)

    login(b, s, s.admin.email)
    assert b.driver.current_url.endswith("/console/") and b.driver.find_element(By.ID, "live")
    b.driver.find_element(By.ID, "search-q").send_keys(fan.email[:12])
    b.driver.find_element(By.ID, "search-go").click()
    b.driver.find_element(By.LINK_TEXT, f"user {fan.id}").click()
    assert b.driver.find_element(By.ID, "wallet-email").text == fan.email
    assert figure(b, "balance") == "750" and figure(b, "status") == "active"

    b.driver.find_element(By.LINK_TEXT, unlock["jobId"]).click()
    assert figure(b, "status") == "settled"
    b.driver.find_element(By.ID, "refund-amount").send_keys("100")
    act(b, "refund", confirm=True)
    assert "Refund accepted" in notice(b)
    refund_id = b.driver.current_url.split("/console/jobs/")[1].split("?")[0]
    until_figure(b, "status", "settled")

    tx = ledger_record(s.db, {"_id": refund_id})
    assert tx["refundOf"] == unlock["jobId"] and tx["reason"] == "requested_by_customer"
    creator_leg = next(leg["amount"] for leg in tx["refundLegs"] if leg["walletId"] == creator.id)
    assert sum(leg["amount"] for leg in tx["refundLegs"]) == 100 and creator_leg == 80
    go(b, s, f"/console/wallets/{fan.id}")
    until_figure(b, "balance", str(fan_before + 100))
    go(b, s, f"/console/wallets/{creator.id}")
    until_figure(b, "balance", str(creator_before - creator_leg))
    assert s.http.balance(fan) == 850 and s.http.balance(creator) == 120
    go(b, s, f"/console/jobs/{unlock['jobId']}")
    assert figure(b, "refunded") == "100"
    audit = s.db.jobs.find_one({"_id": refund_id})["audit"]
    block = s.db.auditlogs.find_one({"partition": audit["partition"], "seq": audit["seq"]})
    record = next(r for r in block["jobs"] if r["jobId"] == refund_id)
    assert record["actor"] == {"type": "admin", "id": s.admin.id} and record["reason"] == "requested_by_customer"


def test_a_form_submitted_twice_refunds_once(stack: Stack, browser: Browser) -> None:
    s, b = stack, browser
    fan, creator = seed_users(s.db, 1, prefix="twicefan")[0], seed_users(s.db, 1, role="creator")[0]
    fund(s, fan, 500)
    content = contents.publish(s.db, creator.id, "Twice", 300)
    unlock = settled(s, fan, "/api/premium/unlock", {"contentId": content["_id"]})
    login(b, s, s.admin.email)
    http = with_session(b)
    page = http.get(f"{s.base_url}/console/jobs/{unlock['jobId']}", timeout=10).text
    form = {"csrf_token": hidden(page, "csrf_token"), "form_key": hidden(page, "form_key"), "amount": "50",
            "reason": "duplicate"}
    answers = [http.post(f"{s.base_url}/console/jobs/{unlock['jobId']}/refund", data=form, timeout=10,
                         allow_redirects=False) for _ in range(2)]
    assert [a.status_code for a in answers] == [303, 303]
    assert answers[0].headers["Location"].split("?")[0] == answers[1].headers["Location"].split("?")[0]
    assert "done=already" in answers[1].headers["Location"]
    assert s.db.jobs.count_documents({"type": "refund", "params.original_job_id": unlock["jobId"]}) == 1


def test_operator_freezes_a_wallet_and_its_transfer_is_refused(stack: Stack, browser: Browser) -> None:
    s, b = stack, browser
    fan, friend = seed_users(s.db, 2, prefix="frozenfan")
    fund(s, fan, 300)
    login(b, s, s.admin.email)
    go(b, s, f"/console/wallets/{fan.id}")
    act(b, "freeze", reason="card reported stolen", confirm=True)
    assert "Wallet frozen" in notice(b) and figure(b, "status") == "frozen"
    assert "card reported stolen" in b.driver.find_element(By.ID, "operator-trail").text

    refused = settled(s, fan, "/api/wallet/transfer", {"receiverId": friend.id, "amount": 10}, status="failed")
    assert refused["error"]["code"] == "WALLET_FROZEN" and balance(s, fan.id) == 300
    entry = s.db.auditlogs.find_one({"partition": -1, "action": "wallet.freeze", "target.id": fan.id})
    assert entry["actor"] == {"type": "admin", "id": s.admin.id} and entry["reason"] == "card reported stolen"

    act(b, "unfreeze", reason="card found")
    assert figure(b, "status") == "active"
    settled(s, fan, "/api/wallet/transfer", {"receiverId": friend.id, "amount": 10})


def test_operator_replays_a_failed_delivery(stack: Stack, browser: Browser) -> None:
    s, b = stack, browser
    s.receiver.script("/console-hook", fail=2, status=503)  # both attempts of the schedule fail
    r = s.http.request("POST", "/api/admin/webhooks", token=s.admin,
                       json_body={"url": s.receiver.url("/console-hook"), "eventTypes": ["job.settled"]})
    assert r.status == 201, r
    webhook_id = r.json["webhookId"]
    try:
        fund(s, seed_users(s.db, 1, prefix="hookfan")[0], 40)
        failed = wait_for(lambda: s.db.webhook_deliveries.find_one({"endpointId": webhook_id, "status": "failed"}),
                          30, poll=0.3, what="a failed delivery")
        assert failed is not None and failed["attempts"] == 2

        login(b, s, s.admin.email)
        go(b, s, "/console/webhooks")
        row = b.driver.find_element(By.CSS_SELECTOR, f'tr[data-delivery="{failed["_id"]}"]')
        assert row.find_element(By.CLASS_NAME, "delivery-status").text == "failed"
        act(b, f"replay-{failed['_id']}", reason="receiver fixed")
        assert "Delivery replayed" in notice(b)
        wait_for(lambda: s.db.webhook_deliveries.find_one({"_id": failed["_id"], "status": "delivered"}), 20,
                 poll=0.3, what="the replayed delivery delivered")
        assert [x["status"] for x in s.receiver.received("/console-hook")][-1] == 204
        entry = s.db.auditlogs.find_one({"action": "webhook.replay", "target.id": failed["_id"]})
        assert entry["reason"] == "receiver fixed" and entry["actor"]["id"] == s.admin.id
    finally:
        s.http.request("DELETE", f"/api/admin/webhooks/{webhook_id}", token=s.admin)


class _Attacker(BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        page = (f'<form id="f" method="post" action="{self.target}"><input name="reason" value="pwned"></form>'
                '<script>document.getElementById("f").submit()</script>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def attacker(stack: Stack) -> Iterator[tuple[ThreadingHTTPServer, type[_Attacker]]]:
    handler = type("Attacker", (_Attacker,), {})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()


def test_a_cross_site_form_post_without_the_token_is_refused(stack: Stack, browser: Browser, attacker: Any) -> None:
    s, b = stack, browser
    server, handler = attacker
    victim = seed_users(s.db, 1, prefix="csrfvictim")[0]
    handler.target = f"{s.base_url}/console/wallets/{victim.id}/freeze"
    login(b, s, s.admin.email)
    assert b.driver.find_element(By.ID, "live")
    # Another port of the same host is the same *site*: SameSite=Strict lets the cookie go, the token stops it.
    b.driver.get(f"http://127.0.0.1:{server.server_address[1]}/")
    WebDriverWait(b.driver, 10).until(lambda d: d.find_elements(By.ID, "error-code"))
    assert b.driver.find_element(By.ID, "error-code").text == "CSRF_FAILED"
    assert s.db.wallets.find_one({"_id": victim.id})["status"] == "active"
    assert s.db.auditlogs.count_documents({"target.id": victim.id}) == 0


def test_a_hostile_gift_message_shows_as_text_and_runs_nothing(stack: Stack, browser: Browser) -> None:
    s, b = stack, browser
    fan, creator = seed_users(s.db, 1, prefix="giftfan")[0], seed_users(s.db, 1, role="creator")[0]
    fund(s, fan, 100)
    gift = settled(s, fan, "/api/gifts", {"creatorId": creator.id, "amount": 10, "message": HOSTILE})
    login(b, s, s.admin.email)
    go(b, s, f"/console/jobs/{gift['jobId']}")
    shown = b.driver.find_element(By.CSS_SELECTOR, '[data-param="message"]')
    assert shown.text == HOSTILE
    assert shown.find_elements(By.CSS_SELECTOR, "script, img") == []
    assert b.driver.title.startswith("Job ") and "pwned" not in b.driver.title
    assert b.driver.execute_script("return document.querySelectorAll('main script, main img').length") == 0
    r = with_session(b).get(f"{s.base_url}/console/jobs/{gift['jobId']}", timeout=10)
    policy = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert "&lt;script&gt;" in r.text and HOSTILE not in r.text


def _run_check(s: Stack, command: str) -> None:
    done = subprocess.run([sys.executable, "-m", "ops", command], env=s.env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _nearest_rank(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{ordered[max(0, math.ceil(q * len(ordered)) - 1)]:.0f}"


def test_the_overview_figures_equal_the_store(stack: Stack, browser: Browser) -> None:
    s, b = stack, browser
    fans = seed_users(s.db, 3, prefix="overviewfan")
    creator = seed_users(s.db, 1, role="creator")[0]
    content = contents.publish(s.db, creator.id, "Overview", 120)
    for fan in fans:
        fund(s, fan, 200)
        settled(s, fan, "/api/premium/unlock", {"contentId": content["_id"]})
        settled(s, fan, "/api/wallet/transfer", {"receiverId": creator.id, "amount": 30})
        settled(s, fan, "/api/wallet/transfer", {"receiverId": creator.id, "amount": 5000}, status="failed")
    now = datetime.now().astimezone()
    s.db.payouts.insert_many([  # one answered long ago (stuck), one fresh: what the tick would leave
        {"_id": f"{i:024x}", "userId": creator.id, "amount": 1000, "status": "submitted", "jobId": f"{i:024x}",
         "createdAt": now - age, "updatedAt": now - age, "events": []}
        for i, age in ((1, timedelta(hours=1)), (2, timedelta(seconds=1)))])
    _run_check(s, "reconcile")
    _run_check(s, "verify-audit")
    wait_for(lambda: s.db.jobs.count_documents({"status": "queued"}) == 0, 20, what="no job queued")

    login(b, s, s.admin.email)
    go(b, s, "/console/")
    start = datetime.fromisoformat(b.driver.find_element(By.ID, "live").get_attribute("data-start"))
    decided = [j for j in s.db.jobs.find({"status": {"$in": ["settled", "failed"]}}) if j["settledAt"] >= start]
    settled_kinds = Counter(j["type"] for j in decided if j["status"] == "settled")
    failed_codes = Counter(j["error"]["code"] for j in decided if j["status"] == "failed")
    latencies = [(j["settledAt"] - j["createdAt"]).total_seconds() * 1000 for j in decided]
    assert settled_kinds["unlock"] >= 3 and failed_codes["INSUFFICIENT_FUNDS"] >= 3

    for kind, count in settled_kinds.items():
        assert figure(b, f"settled:{kind}") == str(count), kind
    assert figure(b, "settled") == str(sum(settled_kinds.values()))
    for code, count in failed_codes.items():
        assert figure(b, f"failed:{code}") == str(count), code
    assert figure(b, "decided") == str(len(decided))
    assert figure(b, "latency:p50") == _nearest_rank(latencies, 0.5)
    assert figure(b, "latency:p99") == _nearest_rank(latencies, 0.99)
    partitions = int(s.env["LEDGER_PARTITIONS"])
    for p in range(partitions):
        assert figure(b, f"backlog:{p}") == str(s.db.jobs.count_documents({"partition": p, "status": "queued"}))
    assert figure(b, "payouts:submitted") == str(s.db.payouts.count_documents({"status": "submitted"}))
    assert figure(b, "payouts:stuck") == "1"
    assert figure(b, "deliveries:failed") == str(s.db.webhook_deliveries.count_documents({"status": "failed"}))
    assert figure(b, "check:reconcile") == "ok" and figure(b, "check:verify-audit") == "ok"
    bars = b.driver.find_elements(By.CSS_SELECTOR, "#chart-settled rect")
    assert sum(int(re.search(r": (\d+)$", bar.get_attribute("textContent")).group(1)) for bar in bars) == sum(
        settled_kinds.values())


def test_logout_ends_the_session_on_the_server(stack: Stack, browser: Browser) -> None:
    s, b = stack, browser
    login(b, s, s.admin.email)
    stolen = with_session(b)  # a copy of the cookie, as a thief would keep it
    assert stolen.get(f"{s.base_url}/console/", timeout=10, allow_redirects=False).status_code == 200
    b.driver.find_element(By.ID, "logout").click()
    WebDriverWait(b.driver, 10).until(lambda d: "/console/login" in d.current_url)
    go(b, s, "/console/")
    assert "/console/login" in b.driver.current_url
    r = stolen.get(f"{s.base_url}/console/", timeout=10, allow_redirects=False)
    assert r.status_code == 302 and "/console/login" in r.headers["Location"]


def test_a_demoted_admin_is_out_at_the_next_page(stack: Stack, browser: Browser) -> None:
    s, b = stack, browser
    deputy = seed_users(s.db, 1, role="admin", prefix="deputy")[0]
    login(b, s, deputy.email)
    assert b.driver.find_element(By.ID, "live")
    s.http.request("PATCH", f"/api/admin/users/{deputy.id}", token=s.admin, json_body={"role": "free"})
    go(b, s, "/console/")
    assert b.driver.find_element(By.ID, "error-code").text == "FORBIDDEN"
    go(b, s, "/console/")
    assert "/console/login" in b.driver.current_url, "the session was ended, not only refused"


def test_operator_asks_the_provider_about_a_submitted_payout(stack: Stack, browser: Browser,
                                                             tmp_path: Path) -> None:
    s, b = stack, browser
    creator = seed_users(s.db, 1, role="creator", prefix="payee")[0]
    fund(s, creator, 2000)
    # The simulator takes the payout and, with an hour's delay, keeps it pending: a payout waiting on the bank.
    sim = ProviderSimProcess({**s.env, "PROVIDER_SIM_DELAY_SECONDS": "3600"}, tmp_path / "provider-sim.log",
                             s.base_url, port=int(s.env["PAYOUT_PROVIDER_URL"].rsplit(":", 1)[1]))
    sim.start()
    try:
        hold = settled(s, creator, "/api/payouts", {"amount": 1000})
        payout_id = hold["jobId"]
        wait_for(lambda: s.db.payouts.find_one({"_id": payout_id, "status": "submitted"}), 30, poll=0.3,
                 what="the payout submitted to the provider")
        login(b, s, s.admin.email)
        go(b, s, "/console/payouts?status=submitted")
        b.driver.find_element(By.LINK_TEXT, payout_id).click()
        assert figure(b, "status") == "submitted" and figure(b, "amount") == "1000"
        act(b, "ask", reason="creator asks where the money is")
        assert "The provider answered" in notice(b)
        assert "provider said: pending" in b.driver.find_element(By.ID, "operator-trail").text
        entry = s.db.auditlogs.find_one({"action": "payout.ask_provider", "target.id": payout_id})
        assert entry["after"]["providerStatus"] == "pending" and entry["reason"] == "creator asks where the money is"
    finally:
        sim.stop()
    go(b, s, f"/console/payouts/{payout_id}")
    act(b, "ask", reason="and again, provider down")
    assert b.driver.find_element(By.ID, "error-code").text == "PROVIDER_UNAVAILABLE"
    assert s.db.auditlogs.count_documents({"action": "payout.ask_provider", "target.id": payout_id}) == 1
    assert s.db.payouts.find_one({"_id": payout_id})["status"] == "submitted"


def test_sessions_end_when_idle_and_at_their_maximum_age(stack: Stack) -> None:
    import redis

    server = redis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        token, session = console_sessions.open_session(server, stack.admin.id, idle=1)
        assert console_sessions.load_session(server, token, idle=1, max_age=60) == session
        time.sleep(1.5)
        assert console_sessions.load_session(server, token, idle=1, max_age=60) is None, "idle too long"
        token, session = console_sessions.open_session(server, stack.admin.id, idle=60)
        assert console_sessions.load_session(server, token, 60, 3600, now=session.created_at + 3599) == session
        assert console_sessions.load_session(server, token, 60, 3600, now=session.created_at + 3600) is None
        assert console_sessions.load_session(server, token, 60, 3600, now=session.created_at) is None, "deleted"
        assert not list(server.scan_iter(match=console_sessions.KEY_PREFIX + "*" + token[:8] + "*")), "hashed keys"
    finally:
        server.close()
