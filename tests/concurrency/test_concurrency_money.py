"""Many clients at once, over HTTP, against gunicorn and a Celery worker pool.

Each scenario ends the same way: wait until nothing is queued, ask the API (as
each job's owner) for the final state of every accepted job, recompute every
wallet from those answers alone and compare with the store coin for coin, look
for anything applied twice, then run the money invariants.
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from fractions import Fraction
from typing import Any

import pytest

from ledger.money import EXTERNAL_FUNDING, PLATFORM_PROCESSING, PLATFORM_REVENUE
from tests.support.client import ApiClient
from tests.support.invariants import assert_money_invariants
from tests.support.journal import count_records
from tests.support.load import Sent, Tally, assert_told_matches_store, doubled, fire, fund
from tests.support.seeding import User, seed_users
from tests.support.waiting import wait_drained

pytestmark = pytest.mark.slow


def _finish(db: Any, http: ApiClient, tally: Tally, users: list[User]) -> dict[str, Any]:
    drain = wait_drained(db)
    tally.collect(http, {u.id: u for u in users})
    assert_told_matches_store(db, tally)
    assert doubled(db) == []
    figures = assert_money_invariants(db, accepted_job_ids=tally.accepted_ids)
    return {**figures, "drain_seconds": round(drain, 2), "told": dict(tally.outcome_counts())}


def _balance(http: ApiClient, user: User) -> int:
    r = http.request("GET", "/api/wallet/balance", token=user.token)
    assert r.status == 200, r
    return r.json["balance"]


def _wallet(db: Any, wallet_id: str) -> int:
    """A wallet's balance; a system wallet's is the sum of its partition buckets."""
    from ledger.money import is_system_wallet
    from tests.support.settle import system_balances

    if is_system_wallet(wallet_id):
        return system_balances(db)[wallet_id]
    return db.wallets.find_one({"_id": wallet_id})["balance"]


def _publish(http: ApiClient, creator: User, price: int) -> str:
    r = http.request("POST", "/api/premium/content", json_body={"title": "the scoop", "price": price},
                     token=creator.token)
    assert r.status == 201, r
    return r.json["contentId"]


def _accepted_all(sent: list[Sent]) -> None:
    refused = [s.reply for s in sent if not s.accepted]
    assert not refused, f"{len(refused)} request(s) refused: {refused[:3]}"
    for s in sent:
        assert s.reply.headers["Location"] == f"/api/jobs/{s.job_id}"


# The documented revenue share (80 / 15 / 5 %), written out here and computed with exact
# rationals and the largest-remainder rule (ties to the party listed first), independently
# of ledger.splits: a wrong split() cannot also move the expected figures.
_SHARES = (("creator", Fraction(80, 100)), (PLATFORM_REVENUE, Fraction(15, 100)),
           (PLATFORM_PROCESSING, Fraction(5, 100)))


def _expected_split(gross: int) -> dict[str, int]:
    exact = [(party, gross * share) for party, share in _SHARES]
    parts = {party: int(value) for party, value in exact}  # floor: values are >= 0
    leftover = gross - sum(parts.values())
    by_remainder = sorted(range(len(exact)), key=lambda i: (-(exact[i][1] - int(exact[i][1])), i))
    for i in by_remainder[:leftover]:
        parts[exact[i][0]] += 1
    return parts


def test_expected_split_oracle_matches_a_hand_table():
    assert _expected_split(1) == {"creator": 1, PLATFORM_REVENUE: 0, PLATFORM_PROCESSING: 0}
    assert _expected_split(7) == {"creator": 6, PLATFORM_REVENUE: 1, PLATFORM_PROCESSING: 0}
    assert _expected_split(19) == {"creator": 15, PLATFORM_REVENUE: 3, PLATFORM_PROCESSING: 1}
    assert _expected_split(100) == {"creator": 80, PLATFORM_REVENUE: 15, PLATFORM_PROCESSING: 5}


def test_200_users_unlock_the_same_content_at_once(conc):
    stack, db = conc
    http, tally = stack.http, Tally()
    creator = seed_users(db, 1, "creator", "creator")[0]
    fans = seed_users(db, 200, "free", "fan")
    price = 125  # 80 % is exactly 100; 15 % and 5 % need the largest-remainder rule
    # A literal table, not production split(): 15 % of 125 is 18.75, 5 % is 6.25, and the
    # leftover coin goes to the larger remainder (platform revenue).
    parts = {"creator": 100, PLATFORM_REVENUE: 19, PLATFORM_PROCESSING: 6}
    assert parts == _expected_split(price)
    content_id = _publish(http, creator, price)
    fund(http, tally, fans, 1000)
    wait_drained(db)

    sent = fire(lambda fan: tally.add(Sent("unlock", fan.id, key := uuid.uuid4().hex,
                                           http.money("/api/premium/unlock", fan, {"contentId": content_id},
                                                      key))), fans)
    _accepted_all(sent)
    figures = _finish(db, http, tally, [creator, *fans])

    assert tally.outcome_counts() == Counter({"settled": 400})  # 200 top-ups + 200 unlocks
    assert _balance(http, creator) == 200 * parts["creator"] == 200 * price * 80 // 100
    assert _wallet(db, PLATFORM_REVENUE) == 200 * parts[PLATFORM_REVENUE]
    assert _wallet(db, PLATFORM_PROCESSING) == 200 * parts[PLATFORM_PROCESSING]
    assert _wallet(db, EXTERNAL_FUNDING) == -200 * 1000
    assert {_wallet(db, fan.id) for fan in fans} == {1000 - price}
    assert db.unlocks.count_documents({"contentId": content_id}) == 200
    assert count_records(db, {"type": "unlock"}) == 200
    print("unlock stampede", figures)


def test_100_users_subscribe_to_one_creator_at_once_each_twice(conc):
    stack, db = conc
    http, tally = stack.http, Tally()
    creator = seed_users(db, 1, "creator", "creator")[0]
    fans = seed_users(db, 100, "free", "sub")
    r = http.request("PUT", "/api/subscription/plan", json_body={"price": 300, "periodDays": 30},
                     token=creator.token)
    assert r.status == 200, r
    fund(http, tally, fans, 1000)
    wait_drained(db)

    # Every fan sends two subscribe requests (two keys, e.g. a double click) at once.
    sent = fire(lambda fan: tally.add(Sent("subscribe", fan.id, key := uuid.uuid4().hex,
                                           http.money("/api/subscription/subscribe", fan,
                                                      {"creatorId": creator.id}, key))), fans + fans)
    _accepted_all(sent)
    _finish(db, http, tally, [creator, *fans])

    subscribes = [v for v in tally.told.values() if v["type"] == "subscribe"]
    assert Counter(v["status"] for v in subscribes) == Counter({"settled": 100, "failed": 100})
    assert tally.codes() == Counter({"ALREADY_SUBSCRIBED": 100})
    per_fan = Counter(tally.jobs[v["jobId"]].payer for v in subscribes if v["status"] == "settled")
    assert set(per_fan.values()) == {1} and len(per_fan) == 100
    assert db.subscriptions.count_documents({"creatorId": creator.id, "status": "active"}) == 100
    assert _balance(http, creator) == 100 * 240
    assert {_wallet(db, fan.id) for fan in fans} == {700}


def test_50_pairs_transfer_back_and_forth_20_times_each(conc):
    stack, db = conc
    http, tally = stack.http, Tally()
    users = seed_users(db, 100, "free", "pair")
    pairs = list(zip(users[0::2], users[1::2], strict=True))
    fund(http, tally, users, 1000)
    wait_drained(db)

    orders = [(a, b, n + 1) for a, b in pairs for n in range(20)]
    orders += [(b, a, n + 1) for a, b in pairs for n in range(20)]

    def send(order: tuple[User, User, int]) -> Sent:
        sender, receiver, amount = order
        key = uuid.uuid4().hex
        reply = http.money("/api/wallet/transfer", sender, {"receiverId": receiver.id, "amount": amount}, key)
        return tally.add(Sent("transfer", sender.id, key, reply, receiver=receiver.id))

    sent = fire(send, orders)
    _accepted_all(sent)
    figures = _finish(db, http, tally, users)

    assert tally.outcome_counts() == Counter({"settled": 100 + 2000})
    # Each side sent 1 + 2 + ... + 20 and received the same: everyone is back at 1000.
    assert {_wallet(db, u.id) for u in users} == {1000}
    assert count_records(db, {"type": "transfer"}) == 2000
    print("pairs", figures)


def test_one_fan_fires_100_unlocks_of_the_same_content(conc):
    stack, db = conc
    http, tally = stack.http, Tally()
    creator = seed_users(db, 1, "creator", "creator")[0]
    fan = seed_users(db, 1, "free", "eager")[0]
    content_id = _publish(http, creator, 125)
    fund(http, tally, [fan], 1000)
    wait_drained(db)

    sent = fire(lambda _: tally.add(Sent("unlock", fan.id, key := uuid.uuid4().hex,
                                         http.money("/api/premium/unlock", fan, {"contentId": content_id},
                                                    key))), range(100))
    _accepted_all(sent)
    assert len({s.job_id for s in sent}) == 100  # a hundred keys, a hundred jobs
    _finish(db, http, tally, [creator, fan])

    unlocks = [v for v in tally.told.values() if v["type"] == "unlock"]
    assert Counter(v["status"] for v in unlocks) == Counter({"settled": 1, "failed": 99})
    assert tally.codes() == Counter({"ALREADY_UNLOCKED": 99})
    assert _balance(http, fan) == 1000 - 125
    assert _balance(http, creator) == 100
    assert db.unlocks.count_documents({"userId": fan.id}) == 1


def test_wallet_with_ten_times_the_amount_gets_50_concurrent_transfers_out(conc):
    stack, db = conc
    http, tally = stack.http, Tally()
    sender = seed_users(db, 1, "free", "rich")[0]
    receivers = seed_users(db, 10, "free", "recv")
    amount = 50
    fund(http, tally, [sender], 10 * amount)
    wait_drained(db)

    def send(receiver: User) -> Sent:
        key = uuid.uuid4().hex
        reply = http.money("/api/wallet/transfer", sender, {"receiverId": receiver.id, "amount": amount}, key)
        return tally.add(Sent("transfer", sender.id, key, reply, receiver=receiver.id))

    sent = fire(send, list(itertools.islice(itertools.cycle(receivers), 50)))
    _accepted_all(sent)
    _finish(db, http, tally, [sender, *receivers])

    transfers = [v for v in tally.told.values() if v["type"] == "transfer"]
    assert Counter(v["status"] for v in transfers) == Counter({"settled": 10, "failed": 40})
    assert tally.codes() == Counter({"INSUFFICIENT_FUNDS": 40})
    assert _balance(http, sender) == 0
    assert sum(_wallet(db, r.id) for r in receivers) == 10 * amount


def test_hot_creator_receives_1000_gifts_from_100_fans(conc):
    stack, db = conc
    http, tally = stack.http, Tally()
    creator = seed_users(db, 1, "creator", "hot")[0]
    fans = seed_users(db, 100, "free", "gifter")
    fund(http, tally, fans, 1000)
    wait_drained(db)

    gifts = [(fan, 1 + (i * 7 + j * 13) % 60) for i, fan in enumerate(fans) for j in range(10)]

    def give(gift: tuple[User, int]) -> Sent:
        fan, amount = gift
        key = uuid.uuid4().hex
        reply = http.money("/api/gifts", fan, {"creatorId": creator.id, "amount": amount}, key)
        return tally.add(Sent("gift", fan.id, key, reply))

    sent = fire(give, gifts)
    _accepted_all(sent)
    figures = _finish(db, http, tally, [creator, *fans])

    assert tally.outcome_counts() == Counter({"settled": 100 + 1000})
    expected = Counter()
    for _, amount in gifts:
        expected.update(_expected_split(amount))
    assert sum(expected.values()) == sum(amount for _, amount in gifts)
    assert _balance(http, creator) == expected["creator"]
    assert _wallet(db, PLATFORM_REVENUE) == expected[PLATFORM_REVENUE]
    assert _wallet(db, PLATFORM_PROCESSING) == expected[PLATFORM_PROCESSING]
    spent = Counter()
    for fan, amount in gifts:
        spent[fan.id] += amount
    assert all(_wallet(db, fan.id) == 1000 - spent[fan.id] for fan in fans)
    print("hot creator", figures)
