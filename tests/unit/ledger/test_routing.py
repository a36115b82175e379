"""Pure routing rules: owners, buckets, deferred credits (property-based)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.money import SYSTEM_WALLETS
from ledger.operations import partition_of
from ledger.routing import Router, bucket_id, merge_credits, parse_bucket, route

HEX = st.text(alphabet="0123456789abcdef", min_size=24, max_size=24)
WALLETS = st.one_of(HEX, st.sampled_from(SYSTEM_WALLETS))


@given(st.sampled_from(SYSTEM_WALLETS), st.integers(0, 4096))
def test_bucket_ids_round_trip(system, partition):
    assert parse_bucket(bucket_id(system, partition)) == (system, partition)


@pytest.mark.parametrize("doc_id", ["0" * 24, "platform:revenue", "platform:revenue#", "platform:revenue#x",
                                    "someone#3", "platform:revenue#-1"])
def test_anything_else_is_not_a_bucket(doc_id):
    assert parse_bucket(doc_id) is None


def test_a_bucket_of_a_user_wallet_is_refused():
    with pytest.raises(ValueError):
        bucket_id("0" * 24, 1)


@given(st.integers(1, 16).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))),
       st.dictionaries(WALLETS, st.integers(1, 10**9), max_size=12), HEX)
def test_routing_keeps_every_coin_and_writes_only_owned_balances(setup, credits, payer):
    partitions, partition = setup
    router = Router(partition, partitions)
    deltas = dict(credits)
    # The payer is owned by this partition in real batches (it routed the jobs here).
    if partition_of(payer, partitions) == partition:
        deltas[payer] = deltas.get(payer, 0) - sum(credits.values())
    routed = route(deltas, router)

    # Every coin is either written here or deferred: nothing lost, nothing doubled.
    assert sum(routed.local.values()) + routed.deferred_total == sum(deltas.values())
    for doc_id in routed.local:
        bucket = parse_bucket(doc_id)
        owner = bucket[1] if bucket else partition_of(doc_id, partitions)
        assert owner == partition
    for target, amounts in routed.deferred.items():
        assert target != partition
        assert all(partition_of(w, partitions) == target and a > 0 for w, a in amounts.items())
    # System wallets are never deferred: each partition books its own bucket.
    assert not any(w in SYSTEM_WALLETS for amounts in routed.deferred.values() for w in amounts)


def test_debiting_a_foreign_wallet_is_refused():
    router = Router(0, 8)
    foreign = next(w for w in (f"{i:024x}" for i in range(100)) if partition_of(w, 8) != 0)
    with pytest.raises(ValueError):
        route({foreign: -5}, router)


@given(st.lists(st.dictionaries(HEX, st.integers(1, 1000), max_size=5), max_size=6))
def test_merged_credits_sum_exactly(credits):
    merged = merge_credits(credits)
    assert sum(merged.values()) == sum(sum(c.values()) for c in credits)
    for wallet, amount in merged.items():
        assert amount == sum(c.get(wallet, 0) for c in credits)


def test_router_refuses_a_partition_outside_the_range():
    with pytest.raises(ValueError):
        Router(8, 8)
