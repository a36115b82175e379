"""ledger.audit: canonical JSON and the per-partition hash chain."""

from __future__ import annotations

import copy
import itertools
import json
import random
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.audit import GENESIS, ChainReport, canonical_json, entry_hash, seal, verify_chain
from ledger.timeutil import iso, to_ms

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PROPERTY = settings(max_examples=200, deadline=None, derandomize=False)


def random_entry(rng: random.Random, seq: int) -> dict:
    """An audit entry as the worker writes it: scalars, a datetime, nested before/after balances."""
    wallets = rng.sample(["u1", "u2", "u3", "platform:revenue", "platform:processing"], rng.randint(1, 4))
    balances = {}
    for w in wallets:
        before = rng.randint(0, 10_000)
        balances[w] = {"before": before, "after": before + rng.randint(-before, 500)}
    return {
        "_id": f"{rng.getrandbits(96):024x}",
        "seq": seq,
        "partition": 3,
        "at": to_ms(START + timedelta(seconds=seq, microseconds=rng.randint(0, 999_999))),
        "actor": rng.choice(["u1", "u2", "system:beat", "admin:7"]),
        "entity": {"type": rng.choice(["job", "wallet"]), "id": f"{rng.getrandbits(96):024x}"},
        "action": rng.choice(["settled", "failed"]),
        "code": rng.choice([None, "INSUFFICIENT_FUNDS"]),
        "requestId": rng.choice([None, f"req-{rng.getrandbits(32):08x}"]),
        "balances": balances,
        "tags": rng.sample(["a", "b", "ü", "€"], rng.randint(0, 3)),
        "amount": rng.randint(1, 10**9),
    }


def build_chain(n: int = 50, seed: int = 7, start: str = GENESIS) -> list[dict]:
    rng = random.Random(seed)
    chain, prev = [], start
    for seq in range(n):
        sealed = seal(random_entry(rng, seq), prev)
        chain.append(sealed)
        prev = sealed["hash"]
    return chain


CHAIN = build_chain()


def fresh_chain() -> list[dict]:
    """A copy whose entries can be edited at the top level (nested values are shared)."""
    return [dict(entry) for entry in CHAIN]


def assert_broken(report: ChainReport, index: int) -> None:
    assert not report.ok
    assert report.broken_at is not None
    assert report.checked == index  # every entry before the damage still verifies
    assert report.reason


# --- seal and verify ------------------------------------------------------------

def test_a_sealed_chain_verifies():
    report = verify_chain(CHAIN)
    assert report == ChainReport(ok=True, checked=50)
    assert CHAIN[0]["prevHash"] == GENESIS
    for prev, entry in itertools.pairwise(CHAIN):
        assert entry["prevHash"] == prev["hash"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", e["hash"]) for e in CHAIN)
    assert len({e["hash"] for e in CHAIN}) == 50


def test_seal_is_deterministic_and_does_not_mutate():
    rng = random.Random(1)
    entry = random_entry(rng, 0)
    original = copy.deepcopy(entry)
    first = seal(entry, GENESIS)
    assert entry == original
    assert "hash" not in entry
    assert "prevHash" not in entry
    assert seal(copy.deepcopy(entry), GENESIS) == first
    assert first["hash"] == entry_hash(first, GENESIS)
    # A stale hash on the input is replaced, not trusted.
    assert seal({**entry, "hash": "f" * 64}, GENESIS)["hash"] == first["hash"]


def test_the_chain_depends_on_its_start():
    other = build_chain(start="a" * 64)
    assert other[0]["hash"] != CHAIN[0]["hash"]
    assert verify_chain(other, start_hash="a" * 64).ok
    assert_broken(verify_chain(other), 0)


def test_an_empty_chain_verifies():
    assert verify_chain([]) == ChainReport(ok=True, checked=0)


def test_a_suffix_verifies_from_its_predecessor_hash():
    assert verify_chain(CHAIN[20:], start_hash=CHAIN[19]["hash"]) == ChainReport(True, 30)
    assert_broken(verify_chain(CHAIN[20:]), 0)


def tamper(value):
    if isinstance(value, bool) or value is None:
        return "tampered"
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, datetime):
        return value + timedelta(milliseconds=1)
    if isinstance(value, list):
        return [*value, "x"]
    if isinstance(value, dict):
        key = sorted(value)[0]
        return {**value, key: tamper(value[key])}
    raise AssertionError(type(value))


HASHED_FIELDS = sorted(set(CHAIN[0]) - {"_id"})


@pytest.mark.parametrize("index", [0, 1, 25, 49])
@pytest.mark.parametrize("field", HASHED_FIELDS)
def test_tampering_with_any_field_is_detected(index, field):
    chain = fresh_chain()
    chain[index][field] = tamper(chain[index][field])
    report = verify_chain(chain)
    assert_broken(report, index)
    if field != "seq":
        assert report.broken_at == index


@pytest.mark.parametrize("index", [0, 10, 49])
def test_tampering_deep_inside_nested_values_is_detected(index):
    chain = fresh_chain()
    chain[index] = copy.deepcopy(CHAIN[index])
    wallet = sorted(chain[index]["balances"])[-1]
    chain[index]["balances"][wallet]["after"] += 1
    assert_broken(verify_chain(chain), index)
    chain = fresh_chain()
    chain[index] = copy.deepcopy(CHAIN[index])
    chain[index]["entity"]["type"] = "wallet" if chain[index]["entity"]["type"] == "job" else "job"
    assert_broken(verify_chain(chain), index)


@pytest.mark.parametrize("index", [0, 1, 24, 48])
def test_deleting_an_entry_is_detected(index):
    chain = fresh_chain()
    del chain[index]
    report = verify_chain(chain)
    assert_broken(report, index)
    assert report.broken_at == index + 1


def test_deleting_the_last_entries_is_not_visible_in_the_chain_alone():
    # Truncation leaves a valid, shorter chain: the caller must compare `checked`
    # (or the last hash) with the head it stored for the partition.
    report = verify_chain(CHAIN[:-3])
    assert report.ok
    assert report.checked == 47


@pytest.mark.parametrize(("i", "j"), [(0, 1), (10, 11), (5, 30), (48, 49)])
def test_swapping_two_entries_is_detected(i, j):
    chain = fresh_chain()
    chain[i], chain[j] = chain[j], chain[i]
    report = verify_chain(chain)
    assert_broken(report, i)
    assert report.broken_at == j


def test_swapping_entries_without_seq_is_still_detected():
    chain = fresh_chain()
    for entry in chain:
        entry.pop("seq")
    # Without seq the chain no longer verifies as sealed (seq was hashed)...
    assert not verify_chain(chain).ok
    # ...so reseal a seq-less chain, then swap.
    prev, resealed = GENESIS, []
    for entry in chain:
        entry = seal({k: v for k, v in entry.items() if k not in ("hash", "prevHash")}, prev)
        resealed.append(entry)
        prev = entry["hash"]
    assert verify_chain(resealed).ok
    resealed[3], resealed[4] = resealed[4], resealed[3]
    report = verify_chain(resealed)
    assert not report.ok
    assert report.broken_at is None  # no seq to name; `checked` locates it
    assert report.checked == 3
    assert "prevHash" in report.reason


@pytest.mark.parametrize("index", [0, 1, 25, 49])
def test_changing_a_prev_hash_is_detected(index):
    chain = fresh_chain()
    chain[index]["prevHash"] = "f" * 64
    report = verify_chain(chain)
    assert_broken(report, index)
    assert report.broken_at == index
    assert "prevHash" in report.reason


@pytest.mark.parametrize("index", [0, 25, 49])
def test_changing_a_hash_is_detected(index):
    chain = fresh_chain()
    chain[index]["hash"] = "0" * 64
    report = verify_chain(chain)
    assert_broken(report, index)
    assert report.broken_at == index
    assert "hash does not match" in report.reason


def test_a_sequence_gap_is_reported_at_the_entry_found():
    chain = fresh_chain()
    report = verify_chain([*chain[:5], *chain[6:]])
    assert_broken(report, 5)
    assert report.broken_at == 6
    assert "sequence gap" in report.reason


def test_the_stored_id_is_not_part_of_the_fact():
    chain = fresh_chain()
    chain[10]["_id"] = "something else"
    del chain[11]["_id"]
    assert verify_chain(chain).ok


def test_rewriting_history_and_resealing_the_tail_verifies():
    # The limit of a hash chain: whoever can rewrite the tail can reseal it. Only a
    # head hash kept elsewhere (or published) catches this.
    chain = fresh_chain()
    chain[40]["amount"] += 1000
    prev = chain[39]["hash"]
    for i in range(40, 50):
        chain[i] = seal({k: v for k, v in chain[i].items() if k not in ("hash", "prevHash")}, prev)
        prev = chain[i]["hash"]
    assert verify_chain(chain).ok
    assert chain[-1]["hash"] != CHAIN[-1]["hash"]
    assert CHAIN[40]["amount"] == chain[40]["amount"] - 1000


@settings(max_examples=100, deadline=None, derandomize=False)  # the tables above cover every field
@given(data=st.data())
def test_any_single_change_to_a_hashed_value_breaks_the_chain(data):
    index = data.draw(st.integers(0, 49))
    field = data.draw(st.sampled_from(HASHED_FIELDS))
    chain = fresh_chain()
    new_value = data.draw(st.one_of(st.integers(), st.text(), st.none(), st.booleans(),
                                    st.dictionaries(st.text(), st.integers(), max_size=2)))
    if canonical_json({"v": new_value}) == canonical_json({"v": chain[index][field]}):
        return  # the same JSON value: not a change
    chain[index][field] = new_value
    report = verify_chain(chain)
    assert not report.ok
    assert report.checked == index


# --- canonical JSON ------------------------------------------------------------

def test_canonical_json_is_key_order_independent():
    a = {"b": 1, "a": {"y": [1, {"q": 1, "p": 2}], "x": None}, "c": "é"}
    b = {"c": "é", "a": {"x": None, "y": [1, {"p": 2, "q": 1}]}, "b": 1}
    assert list(a) != list(b)
    assert canonical_json(a) == canonical_json(b)
    assert canonical_json(a) == '{"a":{"x":null,"y":[1,{"p":2,"q":1}]},"b":1,"c":"\\u00e9"}'
    assert entry_hash(a, GENESIS) == entry_hash(b, GENESIS)


@settings(max_examples=100, deadline=None, derandomize=False)
@given(st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(), st.none()), max_size=8),
       st.randoms(use_true_random=False))
def test_canonical_json_ignores_insertion_order(body, rnd):
    items = list(body.items())
    rnd.shuffle(items)
    assert canonical_json(dict(items)) == canonical_json(body)
    json.loads(canonical_json(body))  # valid JSON, ASCII only
    assert canonical_json(body).isascii()


def test_canonical_json_leaves_out_the_stored_copy_fields_only():
    body = {"x": 1, "prevHash": "p"}
    assert canonical_json({**body, "_id": "id", "hash": "h"}) == canonical_json(body)
    assert canonical_json(body) == '{"prevHash":"p","x":1}'


@pytest.mark.parametrize("value", [{1, 2}, Decimal("1.5"), b"bytes", object()],
                         ids=["set", "decimal", "bytes", "object"])  # stable ids: repr(object()) has an address
def test_canonical_json_refuses_non_json_values(value):
    with pytest.raises(TypeError):
        canonical_json({"v": value})


# --- datetimes -------------------------------------------------------------------
#
# canonical_json spells every datetime with ``iso()``, which itself goes through
# ``to_ms``: UTC, truncated to the millisecond. So a datetime with microseconds hashes
# the same as its millisecond truncation whether or not the caller used ``to_ms``
# first, and an entry read back from MongoDB (ms precision, maybe naive UTC) still
# verifies. The flip side: changes below a millisecond, a change of time zone that
# keeps the instant, and replacing a datetime by its ISO string are not detected.

MICRO = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_microseconds_hash_like_their_millisecond_truncation():
    truncated = to_ms(MICRO)
    assert truncated != MICRO
    assert canonical_json({"at": MICRO}) == canonical_json({"at": truncated})
    assert canonical_json({"at": MICRO}) == '{"at":"2024-05-01T12:00:00.123Z"}'
    assert entry_hash({"at": MICRO}, GENESIS) == entry_hash({"at": truncated}, GENESIS)


def test_an_entry_sealed_with_microseconds_verifies_after_a_mongodb_round_trip():
    sealed = seal({"seq": 0, "at": MICRO}, GENESIS)
    stored = {**sealed, "at": to_ms(MICRO)}  # what MongoDB gives back
    assert verify_chain([stored]).ok
    naive = {**sealed, "at": to_ms(MICRO).replace(tzinfo=None)}  # pymongo without tz_aware
    assert verify_chain([naive]).ok


def test_same_instant_in_another_zone_hashes_the_same():
    local = MICRO.astimezone(timezone(timedelta(hours=-5)))
    assert canonical_json({"at": local}) == canonical_json({"at": MICRO})


def test_a_datetime_and_its_iso_string_hash_the_same():
    assert canonical_json({"at": MICRO}) == canonical_json({"at": iso(MICRO)})


def test_a_millisecond_change_is_detected():
    sealed = seal({"seq": 0, "at": MICRO}, GENESIS)
    assert not verify_chain([{**sealed, "at": MICRO + timedelta(milliseconds=1)}]).ok
    # ...but a change within the same millisecond is not.
    assert verify_chain([{**sealed, "at": MICRO + timedelta(microseconds=500)}]).ok
