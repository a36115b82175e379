"""ledger.splits: integer parts that sum exactly to the gross, largest remainder."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import splits
from ledger.money import PLATFORM_PROCESSING, PLATFORM_REVENUE
from ledger.splits import BASIS, CREATOR, RULES, SplitRuleError, rule_for, split, validate_rule

PROPERTY = settings(max_examples=200, deadline=None, derandomize=False)

CONFIGURED_RULES = sorted((name, rule) for name, rule in RULES.items() if rule is not None)


@st.composite
def random_rules(draw):
    """1-5 parties with non-negative basis points summing to BASIS."""
    n = draw(st.integers(1, 5))
    cuts = sorted(draw(st.lists(st.integers(0, BASIS), min_size=n - 1, max_size=n - 1)))
    bounds = [0, *cuts, BASIS]
    return tuple((f"party{i}", bounds[i + 1] - bounds[i]) for i in range(n))


grosses = st.one_of(st.integers(0, 1000), st.integers(0, 10**15))


def check_split(gross, rule):
    parts = split(gross, rule)
    # Every party of the rule, in rule order, and nothing else.
    assert list(parts) == [party for party, _ in rule]
    assert sum(parts.values()) == gross
    remainders = {}
    for party, bp in rule:
        exact = Fraction(gross * bp, BASIS)
        assert type(parts[party]) is int
        assert parts[party] >= 0
        assert abs(parts[party] - exact) < 1, (party, parts[party], exact)
        # Largest remainder: a party gets its floor or its floor plus one coin.
        assert parts[party] - (gross * bp) // BASIS in (0, 1)
        remainders[party] = exact - (gross * bp) // BASIS
    # The coins left over went to the largest remainders, ties to the earlier party.
    order = {party: i for i, (party, _) in enumerate(rule)}
    bumped = [p for p, _ in rule if parts[p] > (gross * dict(rule)[p]) // BASIS]
    skipped = [p for p, _ in rule if p not in bumped]
    for winner in bumped:
        for loser in skipped:
            key_w = (-remainders[winner], order[winner])
            key_l = (-remainders[loser], order[loser])
            assert key_w < key_l, (winner, loser, parts)
    # Deterministic.
    assert split(gross, rule) == parts
    return parts


@PROPERTY
@given(rule=st.sampled_from([rule for _, rule in CONFIGURED_RULES]), gross=grosses)
def test_configured_rules_split_exactly(rule, gross):
    check_split(gross, rule)


@PROPERTY
@given(rule=random_rules(), gross=grosses)
def test_random_valid_rules_split_exactly(rule, gross):
    validate_rule("random", rule)
    check_split(gross, rule)


@pytest.mark.parametrize(
    ("gross", "creator", "revenue", "processing"),
    [
        (101, 81, 15, 5),
        (1, 1, 0, 0),
        (2, 2, 0, 0),
        (3, 2, 1, 0),
        (7, 6, 1, 0),
        (100, 80, 15, 5),
        (0, 0, 0, 0),
        (10_000, 8000, 1500, 500),
        (1_000_000_000, 800_000_000, 150_000_000, 50_000_000),
    ],
)
def test_gift_split_table(gross, creator, revenue, processing):
    assert split(gross, rule_for("gift")) == {
        CREATOR: creator,
        PLATFORM_REVENUE: revenue,
        PLATFORM_PROCESSING: processing,
    }


def test_ties_go_to_the_party_listed_first():
    # 2 coins at 25/50/25: floors 0/1/0, one coin left, x and z tie at .5.
    assert split(2, (("x", 2500), ("y", 5000), ("z", 2500))) == {"x": 1, "y": 1, "z": 0}
    assert split(2, (("z", 2500), ("y", 5000), ("x", 2500))) == {"z": 1, "y": 1, "x": 0}
    # Two equal parties and an odd gross: the first one gets the odd coin.
    assert split(1, (("a", 5000), ("b", 5000))) == {"a": 1, "b": 0}
    assert split(1, (("b", 5000), ("a", 5000))) == {"b": 1, "a": 0}
    # A larger remainder beats rule order: 3 coins of 80/15/5 give the platform's
    # .45 the coin, not the creator's .4.
    assert split(3, rule_for("gift"))[PLATFORM_REVENUE] == 1


def test_default_revenue_share_and_order():
    expected = ((CREATOR, 8000), (PLATFORM_REVENUE, 1500), (PLATFORM_PROCESSING, 500))
    for kind in ("unlock", "subscribe", "renew", "gift"):
        assert rule_for(kind) == expected
    for kind in ("transfer", "topup", "credit"):
        assert rule_for(kind) is None


def test_rules_are_valid_at_import():
    for name, rule in RULES.items():
        if rule is not None:
            assert sum(bp for _, bp in rule) == BASIS, name
            validate_rule(name, rule)


def test_a_bad_rule_fails_the_module_import():
    source = Path(splits.__file__).read_text()
    assert "(CREATOR, 8000)," in source
    namespace = {"__name__": "ledger.splits_under_test"}
    with pytest.raises(ValueError, match="not 10000"):
        exec(compile(source.replace("(CREATOR, 8000),", "(CREATOR, 7999),"), "splits", "exec"), namespace)


def test_rules_mapping_is_read_only():
    with pytest.raises(TypeError):
        RULES["gift"] = None  # type: ignore[index]


def test_unknown_kind_has_no_rule():
    with pytest.raises(KeyError):
        rule_for("withdrawal")


@pytest.mark.parametrize(
    "rule",
    [
        (),
        (("a", 9999),),
        (("a", 10001),),
        (("a", 5000), ("b", 4999)),
        (("a", 5000), ("b", 5001)),
        (("a", -100), ("b", 10100)),
        (("a", 5000), ("a", 5000)),
        (("a", 5000), ("b", 3000), ("a", 2000)),
        (("a", True), ("b", 9999)),  # sums to 10000, but a bool is not a share
        (("a", 5000.0), ("b", 5000)),
        (("a", "5000"), ("b", 5000)),
        (("a", None), ("b", 10000)),
    ],
    ids=repr,
)
def test_validate_rule_rejects(rule):
    with pytest.raises(SplitRuleError):
        validate_rule("bad", rule)


def test_split_rule_error_is_a_value_error():
    assert issubclass(SplitRuleError, ValueError)


def test_validate_rule_accepts_zero_shares():
    validate_rule("ok", (("a", 10000), ("b", 0)))
    assert split(99, (("a", 10000), ("b", 0))) == {"a": 99, "b": 0}


@pytest.mark.parametrize("gross", [-1, True, 1.0, "1", None], ids=repr)
def test_split_rejects_bad_gross(gross):
    with pytest.raises(ValueError, match="gross must be a non-negative integer"):
        split(gross, rule_for("gift"))
