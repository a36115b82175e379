"""Adding an operation kind means one class, one decider, one split rule and one schema."""

from __future__ import annotations

import dataclasses

from api.schemas import OPERATION_REQUESTS
from ledger.decide import DECIDERS
from ledger.operations import OPERATION_TYPES, Reads
from ledger.splits import RULES


def test_every_operation_kind_has_a_decider_a_split_rule_and_a_request_schema():
    kinds = set(OPERATION_TYPES)
    assert {cls.kind for cls in DECIDERS} == kinds, "an operation type lacks a decider"
    assert set(RULES) == kinds, "an operation type lacks a split rule (None means no split)"
    assert set(OPERATION_REQUESTS) == kinds, "an operation type lacks a request schema (None: not over HTTP)"


def test_every_operation_declares_what_it_reads_including_its_routing_wallet():
    for kind, cls in OPERATION_TYPES.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {name: ("a" * 24 if f.type in ("str", "str | None") else 5) for name, f in fields.items()}
        values = {k: (None if fields[k].type == "int | None" else v) for k, v in values.items()}
        if "period_end" in values:
            from datetime import UTC, datetime
            values["period_end"] = datetime(2026, 1, 1, tzinfo=UTC)
        if "auto_renew" in values:
            values["auto_renew"] = True
        if "event" in values:
            values["event"] = "paid"
        if "reason" in values and kind == "refund":
            values["reason"] = "duplicate"
        values[cls.wallet_field] = "b" * 24
        op = cls(**values)
        reads = op.reads()
        assert isinstance(reads, Reads), kind
        assert op.wallet in reads.wallets, f"{kind} does not read the wallet that routes it"
