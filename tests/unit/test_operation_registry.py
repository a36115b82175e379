"""Adding an operation kind means one class, one decider, one split rule and one schema."""

from __future__ import annotations

import dataclasses

from api.request_schemas import OPERATION_REQUESTS
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


# Facts each operation class declares itself (issue 23): none is inherited, so a new
# class that forgets one fails here instead of falling back to a default somewhere.
FACTS = ("kind", "actor", "refund_debtor", "events", "wallet_field")


def test_every_kind_is_one_class_that_declares_every_fact_and_has_a_decider():
    from ledger.states import Actor, Kind
    from services.webhook_events import EVENT_TYPES

    assert set(OPERATION_TYPES) == {kind.value for kind in Kind}, "a Kind without its class, or a class without a Kind"
    for kind in Kind:
        cls = OPERATION_TYPES[kind]
        missing = [fact for fact in FACTS if fact not in vars(cls)]
        assert missing == [], f"{cls.__name__} does not declare {missing}"
        assert cls.kind is kind and isinstance(cls.actor, Actor), cls
        assert cls.refund_debtor is None or cls.refund_debtor in ("creatorId", "receiverId"), cls
        assert set(cls.events) <= set(EVENT_TYPES), f"{cls.__name__} emits undeclared webhook events"
        assert cls in DECIDERS, f"{cls.__name__} has no decider"


def test_refundable_kinds_and_their_debtors_come_from_the_classes():
    from ledger.money_out import REFUNDABLE
    from services.refunds import DEBTOR_FIELD

    declared = {kind for kind, cls in OPERATION_TYPES.items() if cls.refund_debtor is not None}
    assert set(REFUNDABLE) == set(DEBTOR_FIELD) == declared == {"unlock", "gift", "subscribe", "renew", "transfer"}


def test_the_audit_actor_is_the_class_fact():
    from ledger.write_plan import actor

    assert actor({"type": "chargeback", "ownerId": "u"}) == {"type": "provider", "id": "u"}
    assert actor({"type": "renew"}) == {"type": "system", "id": "system"}
    assert actor({"ownerId": "u"}) == {"type": "user", "id": "u"}  # a poison job without a type
