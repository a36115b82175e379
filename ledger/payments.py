"""Deciders of money that moves between users and into Purser: transfers, unlocks,
subscriptions and their renewals, gifts, top-ups and admin credits."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ledger.effects import ExpireSubscription, ExtendSubscription, GrantUnlock, StartSubscription
from ledger.money import EXTERNAL_FUNDING
from ledger.operations import Credit, Gift, Renew, Subscribe, TopUp, Transfer, Unlock
from ledger.outcomes import (
    ALREADY_SUBSCRIBED,
    ALREADY_UNLOCKED,
    CONTENT_NOT_FOUND,
    NO_PLAN,
    OWN_CONTENT,
    RECEIVER_NOT_FOUND,
    RENEWAL_STALE,
    SELF_TRANSFER,
    WALLET_NOT_FOUND,
    Entry,
    Snapshot,
)
from ledger.rules import Decided, Refused, check_funds, revenue_entries, user_wallet
from ledger.states import ACTIVE


def decide_transfer(job_id: str, op: Transfer, state: Snapshot, now: datetime) -> Decided:
    if op.sender == op.receiver:
        raise Refused(SELF_TRANSFER)
    user_wallet(state, op.sender, WALLET_NOT_FOUND)
    user_wallet(state, op.receiver, RECEIVER_NOT_FOUND)
    entries = [Entry(op.sender, -op.amount), Entry(op.receiver, op.amount)]
    return entries, {"amount": op.amount, "receiverId": op.receiver}, []


def decide_unlock(job_id: str, op: Unlock, state: Snapshot, now: datetime) -> Decided:
    content = state.contents.get(op.content_id)
    if content is None or not content.active:
        raise Refused(CONTENT_NOT_FOUND)
    if content.creator_id == op.user:
        raise Refused(OWN_CONTENT)
    if (op.user, op.content_id) in state.unlocks:
        raise Refused(ALREADY_UNLOCKED)
    user_wallet(state, op.user, WALLET_NOT_FOUND)
    user_wallet(state, content.creator_id, RECEIVER_NOT_FOUND)
    entries, parts = revenue_entries(op.user, content.creator_id, content.price, op.kind)
    result = {"amount": content.price, "contentId": op.content_id, "creatorId": content.creator_id,
              "split": parts}
    return entries, result, [GrantUnlock(op.user, op.content_id, content.creator_id, content.price)]


def decide_subscribe(job_id: str, op: Subscribe, state: Snapshot, now: datetime) -> Decided:
    if op.subscriber == op.creator:
        raise Refused(SELF_TRANSFER)
    plan = state.plans.get(op.creator)
    if plan is None or not plan.active:
        raise Refused(NO_PLAN)
    if state.has_active_subscription(op.subscriber, op.creator):
        raise Refused(ALREADY_SUBSCRIBED)
    user_wallet(state, op.subscriber, WALLET_NOT_FOUND)
    user_wallet(state, op.creator, RECEIVER_NOT_FOUND)
    entries, parts = revenue_entries(op.subscriber, op.creator, plan.price, op.kind)
    expires = now + timedelta(days=plan.period_days)
    effect = StartSubscription(job_id, op.subscriber, op.creator, plan.price, plan.period_days,
                               op.auto_renew, now, expires)
    result = {"amount": plan.price, "creatorId": op.creator, "subscriptionId": job_id,
              "expiresAt": expires, "split": parts}
    return entries, result, [effect]


def decide_renew(job_id: str, op: Renew, state: Snapshot, now: datetime) -> Decided:
    sub = state.subscriptions.get(op.subscription_id)
    # A renewal is valid only for the period it was issued for, and only while the
    # subscriber still wants it (a cancel after the tick must not be charged).
    if sub is None or sub.status != ACTIVE or sub.expires_at != op.period_end \
            or sub.subscriber_id != op.subscriber or not sub.auto_renew:
        raise Refused(RENEWAL_STALE)
    plan = state.plans.get(sub.creator_id)
    if plan is None or not plan.active:
        raise Refused(NO_PLAN, (ExpireSubscription(sub.subscription_id, NO_PLAN),))
    try:
        user_wallet(state, op.subscriber, WALLET_NOT_FOUND)
        user_wallet(state, sub.creator_id, RECEIVER_NOT_FOUND)
        entries, parts = revenue_entries(op.subscriber, sub.creator_id, sub.price, op.kind)
        check_funds(state, entries)
    except Refused as refused:
        raise Refused(refused.code, (ExpireSubscription(sub.subscription_id, refused.code),)) from None
    new_end = sub.expires_at + timedelta(days=sub.period_days)
    result = {"amount": sub.price, "creatorId": sub.creator_id, "subscriptionId": sub.subscription_id,
              "expiresAt": new_end, "split": parts}
    return entries, result, [ExtendSubscription(sub.subscription_id, sub.expires_at, new_end)]


def decide_gift(job_id: str, op: Gift, state: Snapshot, now: datetime) -> Decided:
    if op.sender == op.creator:
        raise Refused(SELF_TRANSFER)
    user_wallet(state, op.sender, WALLET_NOT_FOUND)
    user_wallet(state, op.creator, RECEIVER_NOT_FOUND)
    entries, parts = revenue_entries(op.sender, op.creator, op.amount, op.kind)
    return entries, {"amount": op.amount, "creatorId": op.creator, "split": parts}, []


def decide_money_in(job_id: str, op: TopUp | Credit, state: Snapshot, now: datetime) -> Decided:
    user_wallet(state, op.user, RECEIVER_NOT_FOUND)
    entries = [Entry(EXTERNAL_FUNDING, -op.amount), Entry(op.user, op.amount)]
    result: dict[str, Any] = {"amount": op.amount}
    if isinstance(op, TopUp):
        result["providerTxId"] = op.provider_tx_id
    return entries, result, []
