"""The hot creator bench stage (issue 24): the synchronous baseline's gift route and the stage itself.

The baseline's gift must move exactly what Purser's gift moves (the domain's 80/15/5
split, to the coin) and write its ledger and audit records in the SAME transaction
as the wallet updates: a failure on the last insert leaves nothing behind. The
stage then runs end to end on a tiny scale against real gunicorn servers (Purser's
and the baseline's) and the session's ledger worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from loadtest.seed import Population, SeedUser
from tests.support.env import child_env
from tests.support.invariants import assert_money_invariants

pytestmark = pytest.mark.slow

BALANCE = 1_000


@pytest.fixture
def baseline(fresh_db: Any, stack_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """The baseline's gunicorn (``loadtest.sync_baseline``) on the test store."""
    from loadtest.sync_baseline import SyncWebServer

    server = SyncWebServer(child_env(stack_env), tmp_path / "sync-baseline.log", concurrency=1)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _world(db: Any) -> tuple[Population, SeedUser, SeedUser]:
    from loadtest.seed import seed_population
    from loadtest.sync_baseline import seed_baseline

    pop = seed_population(db, free=1, premium=0, creators=1, admins=0, contents_per_creator=0)
    seed_baseline(db, pop, BALANCE)
    return pop, pop.by_role("free")[0], pop.creators[0]


def _token(user: SeedUser) -> str:
    from api.auth import issue_token
    from infra.config import get_settings

    return issue_token(get_settings(), user.id, user.role)[0]


def _gift(server: Any, fan: SeedUser, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{server.base_url}/gift", json=body, headers={"Authorization": f"Bearer {_token(fan)}"},
                         timeout=30)


def _balances(db: Any) -> dict[str, int]:
    from loadtest.sync_baseline import WALLETS

    return {doc["_id"]: doc["balance"] for doc in db[WALLETS].find()}


def test_baseline_gift_splits_80_15_5_to_the_coin_with_its_records(fresh_db: Any, baseline: Any) -> None:
    from ledger.money import PLATFORM_PROCESSING, PLATFORM_REVENUE
    from loadtest.sync_baseline import AUDIT, LEDGER, baseline_invariants

    db = fresh_db
    pop, fan, creator = _world(db)
    # 37 coins: floors 29 / 5 / 1 leave 2 coins, to the largest remainders (processing .85, creator .6).
    answer = _gift(baseline, fan, {"creatorId": creator.id, "amount": 37})
    assert answer.status_code == 201, answer.text
    assert answer.json()["split"] == {"creator": 30, PLATFORM_REVENUE: 5, PLATFORM_PROCESSING: 2}
    assert _balances(db) == {fan.id: BALANCE - 37, creator.id: BALANCE + 30, PLATFORM_REVENUE: 5,
                             PLATFORM_PROCESSING: 2}
    tx_id = answer.json()["giftId"]
    record, audit = db[LEDGER].find_one({"_id": tx_id}), db[AUDIT].find_one({"_id": tx_id})
    assert record["entries"] == [{"walletId": fan.id, "amount": -37}, {"walletId": creator.id, "amount": 30},
                                 {"walletId": PLATFORM_REVENUE, "amount": 5},
                                 {"walletId": PLATFORM_PROCESSING, "amount": 2}]
    assert audit["entries"] == record["entries"] and audit["actor"] == {"type": "user", "id": fan.id}
    assert audit["attempts"] == 1  # no other gift in flight: no write conflict
    assert baseline_invariants(db, pop, BALANCE)["ok"]

    # Refusals move nothing: too much, to oneself, to a system wallet.
    assert _gift(baseline, fan, {"creatorId": creator.id, "amount": BALANCE}).status_code == 422
    assert _gift(baseline, fan, {"creatorId": fan.id, "amount": 1}).status_code == 422
    assert _gift(baseline, fan, {"creatorId": PLATFORM_REVENUE, "amount": 1}).status_code == 400
    assert db[LEDGER].count_documents({}) == 1 and db[AUDIT].count_documents({}) == 1

    # The transfer route the end-to-end stage uses shares the handler's checks: still one ledger record.
    token = _token(fan)
    moved = requests.post(f"{baseline.base_url}/transfer", json={"receiverId": creator.id, "amount": 3},
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert moved.status_code == 201, moved.text
    assert _balances(db)[creator.id] == BALANCE + 33 and db[LEDGER].count_documents({}) == 2
    assert requests.post(f"{baseline.base_url}/transfer", json={"receiverId": creator.id, "amount": 3},
                         timeout=30).status_code == 401


def test_baseline_gift_is_one_transaction(fresh_db: Any, baseline: Any) -> None:
    """The credits (the last write, after the debit and both inserts) fail: the whole gift is undone."""
    from loadtest.sync_baseline import AUDIT, LEDGER

    db = fresh_db
    _, fan, creator = _world(db)
    before = _balances(db)
    # The second ``update`` of the gift is its credits' bulk write (the first is the fan's debit).
    db.client.admin.command({"configureFailPoint": "failCommand", "mode": {"skip": 1, "times": 1},
                             "data": {"failCommands": ["update"], "errorCode": 2}})
    try:
        answer = _gift(baseline, fan, {"creatorId": creator.id, "amount": 20})
    finally:
        db.client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    assert answer.status_code == 500
    assert _balances(db) == before
    assert db[LEDGER].count_documents({}) == 0 and db[AUDIT].count_documents({}) == 0
    assert _gift(baseline, fan, {"creatorId": creator.id, "amount": 20}).status_code == 201


def test_hot_creator_stage_runs_end_to_end(fresh_db: Any, session_worker: Any, web_server: Any,
                                           stack_env: dict[str, str], tmp_path: Path) -> None:
    """A tiny run of the stage: both designs ABBA, every figure present, both designs' money intact."""
    from loadtest.hot_stages import ORDER, hot_creator
    from loadtest.sync_baseline import SyncWebServer

    def start_baseline() -> SyncWebServer:
        server = SyncWebServer(child_env(stack_env), tmp_path / "sync-baseline.log", concurrency=1)
        server.start()
        return server

    def purser_invariants(db: Any) -> dict[str, Any]:
        return {"ok": True, **assert_money_invariants(db)}  # raises when broken

    purser = web_server()
    result = hot_creator(fresh_db, purser_url=purser.base_url, start_baseline=start_baseline, threads=2,
                         seconds=1.5, fans=12, purser_invariants=purser_invariants)
    assert [r["design"] for r in result["runs"]] == list(ORDER) == ["baseline", "purser", "purser", "baseline"]
    for run in result["runs"]:
        assert run["errors"] == 0, run
        assert run["settled"] > 0 and run["settled_per_s"] > 0, run
        assert run["invariants"]["baseline"]["ok"], run["invariants"]
    for run in (result["runs"][0], result["runs"][3]):
        assert run["transaction_attempts"]["mean"] >= 1, run
    for run in result["runs"][1:3]:
        assert run["settled"] == run["statuses"]["202"] and not run["failed"], run
    assert result["invariants_ok"] and result["ratio"] is not None and len(result["pairs"]) == 2
    assert result["purser_settle_p99_s"] is not None
