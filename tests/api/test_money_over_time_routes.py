"""Issue 25 over the real Flask app: balance as of an instant, statements (JSON and CSV), the
platform report and the payout schedule, with their problem answers; nothing written on a refusal."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from ledger.timeutil import iso, utcnow
from tests.api.helpers import assert_problem


def test_balance_as_of_now_and_before_the_first_top_up(api, fresh_db):
    fan = api.user()
    api.fund(fan, 700)
    now = iso(utcnow())
    r = api.get(f"/api/wallet/balance?asOf={now}", fan)
    assert r.status == 200, r
    assert (r.json["balance"], r.json["held"], r.json["debt"], r.json["asOf"]) == (700, 0, 0, now)
    created = fresh_db.wallets.find_one({"_id": fan.id})["createdAt"]
    assert api.get(f"/api/wallet/balance?asOf={iso(created)}", fan).json["balance"] == 0


def test_balance_as_of_refusals(api):
    fan, admin = api.user(), api.user("admin")
    assert_problem(api.get("/api/wallet/balance?asOf=yesterday", fan), 422, "INSTANT_INVALID")
    assert_problem(api.get("/api/wallet/balance?asOf=2026-01-01T00:00:00", fan), 422, "INSTANT_INVALID")
    future = iso(utcnow() + timedelta(hours=1))
    assert_problem(api.get(f"/api/wallet/balance?asOf={future}", fan), 422, "INSTANT_IN_FUTURE")
    assert_problem(api.get("/api/wallet/balance?asOf=2001-01-01T00:00:00Z", fan), 422, "INSTANT_BEFORE_WALLET")
    assert_problem(api.get(f"/api/admin/wallets/{fan.id}/balance", fan), 403, "FORBIDDEN")
    r = api.get(f"/api/admin/wallets/{fan.id}/balance?asOf={iso(utcnow())}", admin)
    assert r.status == 200 and r.json["userId"] == fan.id, r


def test_current_statement_is_provisional_ties_out_and_has_a_csv(api):
    creator, fan = api.user("creator"), api.user()
    api.fund(fan, 2000)
    api.expect_settled(fan, api.money("/api/gifts", fan, {"creatorId": creator.id, "amount": 1000}))
    period = utcnow().strftime("%Y-%m")
    r = api.get(f"/api/statements/{period}", creator)
    assert r.status == 200, r
    body = r.json
    assert body["provisional"] and body["tieOut"]["ok"] and body["closingBalance"] == 800
    assert body["income"]["gift"]["gross"] == 1000 and body["income"]["gift"]["platformRevenue"] == 150
    text = api.get(f"/api/statements/{period}", creator, headers={"Accept": "text/csv"})
    assert text.status == 200 and text.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(text.body.decode())))
    assert [(x["jobId"], int(x["amount"])) for x in rows] == [(x["jobId"], x["amount"]) for x in body["lines"]]
    listed = api.get("/api/statements", creator).json["items"]
    assert listed[0] == {"period": period, "stored": False, "hash": None, "closingBalance": None}


def test_statement_refusals(api):
    creator = api.user("creator")
    assert_problem(api.get("/api/statements/2026-13", creator), 422, "PERIOD_INVALID")
    assert_problem(api.get("/api/statements/nov", creator), 422, "PERIOD_INVALID")
    nxt = (utcnow() + timedelta(days=40)).strftime("%Y-%m")
    assert_problem(api.get(f"/api/statements/{nxt}", creator), 422, "PERIOD_IN_FUTURE")
    assert_problem(api.get("/api/statements/2001-01", creator), 422, "PERIOD_BEFORE_WALLET")
    assert_problem(api.get("/api/admin/reports/2026-01", creator), 403, "FORBIDDEN")


def test_payout_schedule_put_get_delete_and_refusals(api, fresh_db):
    creator, fan = api.user("creator"), api.user()
    put = lambda who, body: api.send("PUT", "/api/payouts/schedule", who, body)  # noqa: E731
    assert_problem(put(fan, {"interval": "weekly", "anchor": "monday", "minimum": 5000}), 403, "PAYOUT_NOT_ALLOWED")
    assert_problem(put(creator, {"interval": "weekly", "anchor": "monday", "minimum": 10}), 422,
                   "PAYOUT_BELOW_MINIMUM")
    assert_problem(put(creator, {"interval": "monthly", "anchor": 31, "minimum": 5000}), 422,
                   "SCHEDULE_ANCHOR_INVALID")
    assert_problem(put(creator, {"interval": "weekly", "anchor": "someday", "minimum": 5000}), 422,
                   "SCHEDULE_ANCHOR_INVALID")
    assert_problem(put(creator, {"interval": "hourly", "minimum": 5000}), 422, "VALIDATION_FAILED")
    assert fresh_db.payout_schedules.count_documents({}) == 0
    assert_problem(api.get("/api/payouts/schedule", creator), 404, "SCHEDULE_NOT_FOUND")
    r = put(creator, {"interval": "monthly", "anchor": 15, "minimum": 5000})
    assert r.status == 200 and r.json["nextSlot"].endswith("-15T00:00:00.000Z"), r
    assert api.get("/api/payouts/schedule", creator).json["minimum"] == 5000
    assert api.send("DELETE", "/api/payouts/schedule", creator).status == 204
    assert_problem(api.send("DELETE", "/api/payouts/schedule", creator), 404, "SCHEDULE_NOT_FOUND")
