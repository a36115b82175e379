"""Revenue split rules: the one place that says who gets what share.

A rule is a tuple of (party, basis points); parties are ``creator`` or a system
wallet id. Rules are validated at import, so a bad edit fails the first test run
and every process start, never a settlement.

Rounding: each party first gets ``floor(gross * bp / 10000)``. The coins left over
(fewer than the number of parties) go one each to the parties with the largest
fractional remainder; ties go to the party listed first in the rule. The rule order
is therefore part of the contract: creator, then platform, then processing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

from ledger.money import PLATFORM_PROCESSING, PLATFORM_REVENUE

CREATOR = "creator"
BASIS = 10_000

SplitRule = tuple[tuple[str, int], ...]

_DEFAULT_REVENUE_SHARE: SplitRule = (
    (CREATOR, 8000),
    (PLATFORM_REVENUE, 1500),
    (PLATFORM_PROCESSING, 500),
)

_RULES: dict[str, SplitRule | None] = {
    "unlock": _DEFAULT_REVENUE_SHARE,
    "subscribe": _DEFAULT_REVENUE_SHARE,
    "renew": _DEFAULT_REVENUE_SHARE,
    "gift": _DEFAULT_REVENUE_SHARE,
    # Peer transfers and money entering from outside carry no fee.
    "transfer": None,
    "topup": None,
    "credit": None,
    # Money out and back: a refund reverses the original's legs in proportion (allocate),
    # the others move whole amounts.
    "payout": None,
    "payout_event": None,
    "refund": None,
    "chargeback": None,
}


class SplitRuleError(ValueError):
    pass


def validate_rule(name: str, rule: SplitRule) -> None:
    """Raise :class:`SplitRuleError` unless ``rule`` is a usable split."""
    if not rule:
        raise SplitRuleError(f"{name}: empty rule")
    parties = [party for party, _ in rule]
    if len(set(parties)) != len(parties):
        raise SplitRuleError(f"{name}: a party appears twice")
    for party, bp in rule:
        if isinstance(bp, bool) or not isinstance(bp, int) or bp < 0:
            raise SplitRuleError(f"{name}: share of {party} must be a non-negative integer")
    total = sum(bp for _, bp in rule)
    if total != BASIS:
        raise SplitRuleError(f"{name}: shares sum to {total}, not {BASIS}")


for _name, _rule in _RULES.items():
    if _rule is not None:
        validate_rule(_name, _rule)

RULES: Mapping[str, SplitRule | None] = MappingProxyType(_RULES)


def split(gross: int, rule: SplitRule) -> dict[str, int]:
    """Split ``gross`` coins by ``rule``; parts sum exactly to ``gross``.

    Largest remainder method, ties broken by rule order (see module docstring).
    Deterministic: the same input always gives the same parts.
    """
    if isinstance(gross, bool) or not isinstance(gross, int) or gross < 0:
        raise ValueError("gross must be a non-negative integer")
    parts: dict[str, int] = {}
    remainders: list[tuple[int, int, str]] = []
    for index, (party, bp) in enumerate(rule):
        whole, frac = divmod(gross * bp, BASIS)
        parts[party] = whole
        # Sort key: larger remainder first, then earlier rule position.
        remainders.append((-frac, index, party))
    leftover = gross - sum(parts.values())
    for _, _, party in sorted(remainders)[:leftover]:
        parts[party] += 1
    return parts


# Refunds give back the processing share too (Stripe's application-fee refund is optional;
# ours defaults to returned). With False the processing bucket keeps its share of each
# refund and the payer receives the refund minus that share.
REFUND_PROCESSING_SHARE = True


def allocate(amount: int, weights: Sequence[tuple[str, int]]) -> dict[str, int]:
    """Share ``amount`` in proportion to integer ``weights`` (largest remainder, ties by order).

    Parts sum exactly to ``amount`` and, when ``amount <= sum(weights)``, no part exceeds
    its weight: floor(a*w/W) + 1 <= ceil(a*w/W) <= w. Refunds rely on both.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise ValueError("amount must be a non-negative integer")
    total = sum(w for _, w in weights)
    if any(w < 0 for _, w in weights) or (amount and total <= 0) or amount > total:
        raise ValueError("amount must not exceed the sum of non-negative weights")
    parts: dict[str, int] = {}
    remainders: list[tuple[int, int, str]] = []
    for index, (party, weight) in enumerate(weights):
        whole, frac = divmod(amount * weight, total) if total else (0, 0)
        parts[party] = parts.get(party, 0) + whole
        remainders.append((-frac, index, party))
    leftover = amount - sum(parts.values())
    for _, _, party in sorted(remainders)[:leftover]:
        parts[party] += 1
    return parts


def rule_for(kind: str) -> SplitRule | None:
    """The split rule for an operation type (``None``: no split)."""
    return RULES[kind]
