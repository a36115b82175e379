"""ledger.decide.decide_batch: table tests per outcome, then a batch property."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.decide import (
    ACTIVE,
    ALREADY_SUBSCRIBED,
    ALREADY_UNLOCKED,
    CONTENT_NOT_FOUND,
    FAILURE_MESSAGES,
    FROZEN,
    INSUFFICIENT_FUNDS,
    INTERNAL_ERROR,
    NO_PLAN,
    OWN_CONTENT,
    RECEIVER_NOT_FOUND,
    RENEWAL_STALE,
    SELF_TRANSFER,
    WALLET_FROZEN,
    WALLET_NOT_FOUND,
    ContentInfo,
    Entry,
    ExpireSubscription,
    ExtendSubscription,
    Failed,
    GrantUnlock,
    Plan,
    Settled,
    Snapshot,
    StartSubscription,
    SubscriptionState,
    WalletState,
    decide_batch,
    failed,
)
from ledger.money import EXTERNAL_FUNDING, PLATFORM_PROCESSING, PLATFORM_REVENUE, SYSTEM_WALLETS
from ledger.operations import Credit, Gift, Renew, Subscribe, TopUp, Transfer, Unlock
from ledger.timeutil import to_ms

NOW = to_ms(datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC))
assert NOW.microsecond == 123000

ALICE, BOB, CAROL, DAVE, GHOST = "alice", "bob", "carol", "dave", "ghost"
CONTENT = "content-1"
SUB = "sub-1"
OLD_END = NOW + timedelta(days=3, hours=2)  # renewal ahead of time: moves from here, not from NOW


def make_snapshot(**overrides):
    """alice 1000, bob 50, carol 0 (creator with a plan and a content), dave frozen."""
    snap = Snapshot(
        wallets={
            ALICE: WalletState(1000),
            BOB: WalletState(50),
            CAROL: WalletState(0),
            DAVE: WalletState(500, FROZEN),
            PLATFORM_REVENUE: WalletState(0),
            PLATFORM_PROCESSING: WalletState(0),
            EXTERNAL_FUNDING: WalletState(-1550),
        },
        contents={
            CONTENT: ContentInfo(CONTENT, CAROL, 101),
            "content-old": ContentInfo("content-old", CAROL, 10, active=False),
            "content-dave": ContentInfo("content-dave", DAVE, 10),
        },
        plans={CAROL: Plan(CAROL, 300, 30), DAVE: Plan(DAVE, 10, 7), BOB: Plan(BOB, 5, 7, active=False)},
        subscriptions={
            SUB: SubscriptionState(SUB, BOB, CAROL, 40, 30, ACTIVE, True, OLD_END),
        },
    )
    for name, value in overrides.items():
        setattr(snap, name, value)
    return snap


def decide(*ops, snapshot=None):
    snapshot = make_snapshot() if snapshot is None else snapshot
    return decide_batch([(f"job-{i}", op) for i, op in enumerate(ops)], snapshot, NOW)


def balances(state):
    return {wallet_id: wallet.balance for wallet_id, wallet in state.wallets.items()}


def assert_failed(outcome, code, effects=()):
    assert isinstance(outcome, Failed), outcome
    assert outcome.ok is False
    assert outcome.code == code
    assert outcome.message == FAILURE_MESSAGES[code]
    assert outcome.effects == effects


def assert_single_failure(op, code, snapshot=None, effects=()):
    snapshot = make_snapshot() if snapshot is None else snapshot
    before = copy.deepcopy(snapshot)
    decision = decide(op, snapshot=snapshot)
    assert len(decision.outcomes) == 1
    outcome = decision.outcomes[0]
    assert_failed(outcome, code, effects)
    assert outcome.job_id == "job-0"
    assert outcome.kind == op.kind
    assert decision.deltas == {}
    assert balances(decision.state) == balances(before)
    assert decision.state.unlocks == before.unlocks
    if not effects:
        assert decision.state == before
    return decision


# --- failure codes ------------------------------------------------------------

@pytest.mark.parametrize(
    "op",
    [Transfer(BOB, ALICE, 51), Gift(BOB, CAROL, 51), Unlock(BOB, CONTENT), Subscribe(CAROL, DAVE)],
    ids=repr,
)
def test_insufficient_funds(op):
    snap = make_snapshot()
    snap.wallets[DAVE].status = ACTIVE
    snap.wallets[CAROL].balance = 9  # dave's plan costs 10
    assert_single_failure(op, INSUFFICIENT_FUNDS, snapshot=snap)


def test_exact_balance_is_enough():
    decision = decide(Transfer(BOB, ALICE, 50))
    assert decision.outcomes[0].ok
    assert decision.state.wallets[BOB].balance == 0


@pytest.mark.parametrize(
    "op",
    [
        Transfer(DAVE, ALICE, 1),  # sender frozen
        Transfer(ALICE, DAVE, 1),  # receiver frozen
        Gift(DAVE, CAROL, 1),
        Gift(ALICE, DAVE, 1),
        Unlock(DAVE, CONTENT),
        Unlock(ALICE, "content-dave"),  # creator frozen
        Subscribe(DAVE, CAROL),
        Subscribe(ALICE, DAVE),
        TopUp(DAVE, 10, "p-1"),
        Credit(DAVE, 10, "goodwill"),
    ],
    ids=repr,
)
def test_wallet_frozen(op):
    assert_single_failure(op, WALLET_FROZEN)


@pytest.mark.parametrize(
    "op",
    [Transfer(GHOST, ALICE, 1), Gift(GHOST, CAROL, 1), Unlock(GHOST, CONTENT), Subscribe(GHOST, CAROL)],
    ids=repr,
)
def test_wallet_not_found(op):
    assert_single_failure(op, WALLET_NOT_FOUND)


@pytest.mark.parametrize(
    "op",
    [
        Transfer(ALICE, ALICE, 1),
        Gift(CAROL, CAROL, 1),
        Subscribe(CAROL, CAROL),
        Transfer(GHOST, GHOST, 1),  # checked before existence
    ],
    ids=repr,
)
def test_self_transfer(op):
    assert_single_failure(op, SELF_TRANSFER)


@pytest.mark.parametrize(
    "op",
    [Transfer(ALICE, GHOST, 1), Gift(ALICE, GHOST, 1), TopUp(GHOST, 10, "p-1"), Credit(GHOST, 10, "r")],
    ids=repr,
)
def test_receiver_not_found(op):
    assert_single_failure(op, RECEIVER_NOT_FOUND)


def test_receiver_not_found_for_a_creator_without_wallet():
    snap = make_snapshot()
    snap.contents["content-ghost"] = ContentInfo("content-ghost", GHOST, 10)
    snap.plans[GHOST] = Plan(GHOST, 10, 30)
    assert_single_failure(Unlock(ALICE, "content-ghost"), RECEIVER_NOT_FOUND, snapshot=snap)
    assert_single_failure(Subscribe(ALICE, GHOST), RECEIVER_NOT_FOUND, snapshot=snap)


@pytest.mark.parametrize(
    "op",
    [
        # A system account is not a user, whatever reached the ledger.
        Transfer(EXTERNAL_FUNDING, ALICE, 1000),
        Transfer(PLATFORM_REVENUE, ALICE, 1),
        Gift(EXTERNAL_FUNDING, CAROL, 1000),
    ],
    ids=repr,
)
def test_system_wallet_cannot_pay_as_a_user(op):
    snap = make_snapshot()
    snap.wallets[PLATFORM_REVENUE].balance = 100
    assert_single_failure(op, WALLET_NOT_FOUND, snapshot=snap)


@pytest.mark.parametrize(
    "op",
    [
        Transfer(ALICE, EXTERNAL_FUNDING, 10),
        Transfer(ALICE, PLATFORM_REVENUE, 10),
        Gift(ALICE, PLATFORM_PROCESSING, 10),
        TopUp(PLATFORM_REVENUE, 10, "p-1"),
        Credit(EXTERNAL_FUNDING, 10, "r"),
    ],
    ids=repr,
)
def test_system_wallet_cannot_receive_as_a_user(op):
    assert_single_failure(op, RECEIVER_NOT_FOUND)


@pytest.mark.parametrize("content_id", ["no-such-content", "content-old"])
def test_content_not_found(content_id):
    assert_single_failure(Unlock(ALICE, content_id), CONTENT_NOT_FOUND)


def test_already_unlocked_before_the_batch():
    assert_single_failure(Unlock(ALICE, CONTENT), ALREADY_UNLOCKED,
                          snapshot=make_snapshot(unlocks={(ALICE, CONTENT)}))


def test_already_unlocked_in_the_same_batch():
    decision = decide(Unlock(ALICE, CONTENT), Unlock(ALICE, CONTENT))
    first, second = decision.outcomes
    assert first.ok
    assert_failed(second, ALREADY_UNLOCKED)
    assert decision.state.wallets[ALICE].balance == 1000 - 101  # charged once
    assert decision.deltas == {ALICE: -101, CAROL: 81, PLATFORM_REVENUE: 15, PLATFORM_PROCESSING: 5}


def test_another_user_may_unlock_the_same_content():
    decision = decide(Unlock(ALICE, CONTENT), snapshot=make_snapshot(unlocks={(BOB, CONTENT)}))
    assert decision.outcomes[0].ok


def test_own_content():
    assert_single_failure(Unlock(CAROL, CONTENT), OWN_CONTENT)


@pytest.mark.parametrize("creator", [ALICE, BOB], ids=["no plan", "inactive plan"])
def test_no_plan(creator):
    assert_single_failure(Subscribe(CAROL, creator), NO_PLAN)


def test_already_subscribed_before_the_batch():
    assert_single_failure(Subscribe(BOB, CAROL), ALREADY_SUBSCRIBED)


def test_already_subscribed_in_the_same_batch():
    decision = decide(Subscribe(ALICE, CAROL), Subscribe(ALICE, CAROL, auto_renew=False))
    first, second = decision.outcomes
    assert first.ok
    assert_failed(second, ALREADY_SUBSCRIBED)
    assert decision.state.wallets[ALICE].balance == 1000 - 300
    assert list(decision.state.subscriptions) == [SUB, "job-0"]


def test_an_expired_subscription_does_not_block_a_new_one():
    snap = make_snapshot()
    snap.subscriptions[SUB].status = "expired"
    snap.wallets[BOB].balance = 300
    decision = decide(Subscribe(BOB, CAROL), snapshot=snap)
    assert decision.outcomes[0].ok


@pytest.mark.parametrize(
    "op",
    [
        Renew(BOB, SUB, OLD_END - timedelta(milliseconds=1)),  # wrong period end
        Renew(BOB, SUB, OLD_END - timedelta(days=30)),  # the previous period: already renewed
        Renew(ALICE, SUB, OLD_END),  # not the subscriber
        Renew(BOB, "no-such-sub", OLD_END),
    ],
    ids=repr,
)
def test_renewal_stale(op):
    assert_single_failure(op, RENEWAL_STALE)


def test_renewal_stale_after_the_subscriber_turned_auto_renew_off():
    # The tick queued the renewal, then the subscriber cancelled: no charge. The
    # subscription stays active until its period ends (expiry is not this job's call).
    snap = make_snapshot()
    snap.subscriptions[SUB].auto_renew = False
    assert_single_failure(Renew(BOB, SUB, OLD_END), RENEWAL_STALE, snapshot=snap)


def test_renewal_stale_for_an_expired_subscription():
    snap = make_snapshot()
    snap.subscriptions[SUB].status = "expired"
    assert_single_failure(Renew(BOB, SUB, OLD_END), RENEWAL_STALE, snapshot=snap)


def test_failed_helper_for_errors_outside_the_rules():
    outcome = failed("job-9", "transfer", INTERNAL_ERROR)
    assert_failed(outcome, INTERNAL_ERROR)
    assert (outcome.job_id, outcome.kind) == ("job-9", "transfer")
    assert failed("j", "gift", "SOMETHING_NEW").message == "SOMETHING_NEW"
    assert failed("j", "gift", INTERNAL_ERROR, "boom").message == "boom"


def test_every_failure_code_has_a_message():
    codes = {ALREADY_SUBSCRIBED, ALREADY_UNLOCKED, CONTENT_NOT_FOUND, INSUFFICIENT_FUNDS, INTERNAL_ERROR,
             NO_PLAN, OWN_CONTENT, RECEIVER_NOT_FOUND, RENEWAL_STALE, SELF_TRANSFER, WALLET_FROZEN,
             WALLET_NOT_FOUND, "PAYOUT_NOT_FOUND", "PAYOUT_STATE_CONFLICT", "ORIGINAL_NOT_FOUND", "NOT_REFUNDABLE",
             "REFUND_EXCEEDS_ORIGINAL", "TOPUP_NOT_FOUND"}
    assert set(FAILURE_MESSAGES) == codes
    assert all(code == code.upper() for code in codes)


# --- successes ----------------------------------------------------------------

def test_transfer_settles():
    decision = decide(Transfer(ALICE, BOB, 250, note="rent"))
    (outcome,) = decision.outcomes
    assert outcome == Settled(
        job_id="job-0",
        kind="transfer",
        entries=(Entry(ALICE, -250), Entry(BOB, 250)),
        result={"amount": 250, "receiverId": BOB},
        effects=(),
        balances={ALICE: (1000, 750), BOB: (50, 300)},
    )
    assert outcome.ok is True
    assert decision.deltas == {ALICE: -250, BOB: 250}
    assert decision.state.wallets[ALICE].balance == 750
    assert decision.state.wallets[BOB].balance == 300


def test_gift_settles_with_the_revenue_split():
    (outcome,) = decide(Gift(ALICE, CAROL, 101, message="hi")).outcomes
    assert outcome.entries == (Entry(ALICE, -101), Entry(CAROL, 81), Entry(PLATFORM_REVENUE, 15),
                               Entry(PLATFORM_PROCESSING, 5))
    assert outcome.result == {"amount": 101, "creatorId": CAROL,
                              "split": {"creator": 81, PLATFORM_REVENUE: 15, PLATFORM_PROCESSING: 5}}
    assert outcome.effects == ()
    assert outcome.balances == {ALICE: (1000, 899), CAROL: (0, 81), PLATFORM_REVENUE: (0, 15),
                                PLATFORM_PROCESSING: (0, 5)}


def test_a_one_coin_gift_has_no_zero_entries():
    (outcome,) = decide(Gift(ALICE, CAROL, 1)).outcomes
    assert outcome.entries == (Entry(ALICE, -1), Entry(CAROL, 1))
    assert outcome.result["split"] == {"creator": 1, PLATFORM_REVENUE: 0, PLATFORM_PROCESSING: 0}


def test_unlock_settles_and_grants():
    decision = decide(Unlock(ALICE, CONTENT))
    (outcome,) = decision.outcomes
    assert outcome.entries == (Entry(ALICE, -101), Entry(CAROL, 81), Entry(PLATFORM_REVENUE, 15),
                               Entry(PLATFORM_PROCESSING, 5))
    assert outcome.result == {"amount": 101, "contentId": CONTENT, "creatorId": CAROL,
                              "split": {"creator": 81, PLATFORM_REVENUE: 15, PLATFORM_PROCESSING: 5}}
    assert outcome.effects == (GrantUnlock(ALICE, CONTENT, CAROL, 101),)
    assert decision.state.unlocks == {(ALICE, CONTENT)}


@pytest.mark.parametrize("auto_renew", [True, False])
def test_subscribe_settles_and_starts_a_subscription(auto_renew):
    decision = decide(Subscribe(ALICE, CAROL, auto_renew=auto_renew))
    (outcome,) = decision.outcomes
    expires = NOW + timedelta(days=30)
    assert outcome.entries == (Entry(ALICE, -300), Entry(CAROL, 240), Entry(PLATFORM_REVENUE, 45),
                               Entry(PLATFORM_PROCESSING, 15))
    assert outcome.effects == (StartSubscription("job-0", ALICE, CAROL, 300, 30, auto_renew, NOW, expires),)
    assert outcome.result == {"amount": 300, "creatorId": CAROL, "subscriptionId": "job-0",
                              "expiresAt": expires,
                              "split": {"creator": 240, PLATFORM_REVENUE: 45, PLATFORM_PROCESSING: 15}}
    assert decision.state.subscriptions["job-0"] == SubscriptionState(
        "job-0", ALICE, CAROL, 300, 30, ACTIVE, auto_renew, expires, 0)


def test_renew_extends_from_the_old_expiry_at_the_subscribed_price():
    snap = make_snapshot()
    snap.plans[CAROL] = Plan(CAROL, 999, 30)  # a later price change does not touch running subscriptions
    decision = decide(Renew(BOB, SUB, OLD_END), snapshot=snap)
    (outcome,) = decision.outcomes
    new_end = OLD_END + timedelta(days=30)
    assert new_end != NOW + timedelta(days=30)
    assert outcome.entries == (Entry(BOB, -40), Entry(CAROL, 32), Entry(PLATFORM_REVENUE, 6),
                               Entry(PLATFORM_PROCESSING, 2))
    assert outcome.effects == (ExtendSubscription(SUB, OLD_END, new_end),)
    assert outcome.result == {"amount": 40, "creatorId": CAROL, "subscriptionId": SUB, "expiresAt": new_end,
                              "split": {"creator": 32, PLATFORM_REVENUE: 6, PLATFORM_PROCESSING: 2}}
    sub = decision.state.subscriptions[SUB]
    assert (sub.expires_at, sub.renewals, sub.status) == (new_end, 1, ACTIVE)


def test_renew_of_a_lapsed_period_still_moves_from_the_old_expiry():
    snap = make_snapshot()
    lapsed = NOW - timedelta(days=2, minutes=5)
    snap.subscriptions[SUB].expires_at = lapsed
    (outcome,) = decide(Renew(BOB, SUB, lapsed), snapshot=snap).outcomes
    assert outcome.effects == (ExtendSubscription(SUB, lapsed, lapsed + timedelta(days=30)),)


def test_a_doubled_renewal_charges_once():
    decision = decide(Renew(BOB, SUB, OLD_END), Renew(BOB, SUB, OLD_END))
    first, second = decision.outcomes
    assert first.ok
    assert_failed(second, RENEWAL_STALE)
    assert decision.deltas[BOB] == -40


def test_two_consecutive_periods_renew_in_one_batch():
    new_end = OLD_END + timedelta(days=30)
    decision = decide(Transfer(ALICE, BOB, 30), Renew(BOB, SUB, OLD_END), Renew(BOB, SUB, new_end))
    assert [o.ok for o in decision.outcomes] == [True, True, True]
    assert decision.state.wallets[BOB].balance == 0
    assert decision.state.subscriptions[SUB].expires_at == new_end + timedelta(days=30)
    assert decision.state.subscriptions[SUB].renewals == 2


def test_renew_without_funds_expires_the_subscription_and_moves_nothing():
    snap = make_snapshot()
    snap.wallets[BOB].balance = 39
    decision = assert_single_failure(Renew(BOB, SUB, OLD_END), INSUFFICIENT_FUNDS, snapshot=snap,
                                     effects=(ExpireSubscription(SUB, INSUFFICIENT_FUNDS),))
    assert not hasattr(decision.outcomes[0], "entries")
    assert decision.state.subscriptions[SUB].status == "expired"
    assert decision.state.subscriptions[SUB].expires_at == OLD_END


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda s: s.plans.pop(CAROL), NO_PLAN),
        (lambda s: s.plans.__setitem__(CAROL, Plan(CAROL, 300, 30, active=False)), NO_PLAN),
        (lambda s: setattr(s.wallets[BOB], "status", FROZEN), WALLET_FROZEN),
        (lambda s: setattr(s.wallets[CAROL], "status", FROZEN), WALLET_FROZEN),
        (lambda s: s.wallets.pop(CAROL), RECEIVER_NOT_FOUND),
    ],
    ids=["plan withdrawn", "plan inactive", "subscriber frozen", "creator frozen", "creator gone"],
)
def test_renew_that_cannot_proceed_expires_the_subscription(change, code):
    snap = make_snapshot()
    change(snap)
    decision = assert_single_failure(Renew(BOB, SUB, OLD_END), code, snapshot=snap,
                                     effects=(ExpireSubscription(SUB, code),))
    assert decision.state.subscriptions[SUB].status == "expired"


def test_a_renewal_after_expiry_in_the_same_batch_is_stale():
    snap = make_snapshot()
    snap.wallets[BOB].balance = 0
    decision = decide(Renew(BOB, SUB, OLD_END), Transfer(ALICE, BOB, 100), Renew(BOB, SUB, OLD_END),
                      snapshot=snap)
    assert_failed(decision.outcomes[0], INSUFFICIENT_FUNDS, (ExpireSubscription(SUB, INSUFFICIENT_FUNDS),))
    assert decision.outcomes[1].ok
    assert_failed(decision.outcomes[2], RENEWAL_STALE)


@pytest.mark.parametrize(("op", "extra"), [
    (TopUp(CAROL, 700, "pi_123"), {"providerTxId": "pi_123"}),
    (Credit(CAROL, 700, "goodwill"), {}),
])
def test_topup_and_credit_debit_external_funding_which_may_go_negative(op, extra):
    snap = make_snapshot()
    snap.wallets[EXTERNAL_FUNDING].balance = 0
    decision = decide(op, snapshot=snap)
    (outcome,) = decision.outcomes
    assert outcome.entries == (Entry(EXTERNAL_FUNDING, -700), Entry(CAROL, 700))
    assert outcome.result == {"amount": 700, **extra}
    assert outcome.effects == ()
    assert outcome.balances == {EXTERNAL_FUNDING: (0, -700), CAROL: (0, 700)}
    assert decision.state.wallets[EXTERNAL_FUNDING].balance == -700
    assert decision.deltas == {EXTERNAL_FUNDING: -700, CAROL: 700}


def test_system_wallets_missing_from_the_snapshot_start_at_zero():
    snap = make_snapshot()
    for wallet_id in SYSTEM_WALLETS:
        snap.wallets.pop(wallet_id, None)
    decision = decide(TopUp(CAROL, 10, "p"), Gift(ALICE, CAROL, 100), snapshot=snap)
    assert [o.ok for o in decision.outcomes] == [True, True]
    assert decision.outcomes[0].balances[EXTERNAL_FUNDING] == (0, -10)
    assert {w: decision.state.wallets[w].balance for w in SYSTEM_WALLETS if w in decision.state.wallets} == {
        PLATFORM_REVENUE: 15, PLATFORM_PROCESSING: 5, EXTERNAL_FUNDING: -10}


# --- batches --------------------------------------------------------------------

def test_a_balance_spent_by_the_first_transfer_is_not_spent_again():
    decision = decide(Transfer(ALICE, BOB, 700), Transfer(ALICE, CAROL, 700), Transfer(ALICE, CAROL, 300))
    first, second, third = decision.outcomes
    assert first.ok
    assert_failed(second, INSUFFICIENT_FUNDS)
    assert third.ok
    assert third.balances[ALICE] == (300, 0)
    assert decision.state.wallets[ALICE].balance == 0
    assert decision.deltas == {ALICE: -1000, BOB: 700, CAROL: 300}


def test_money_received_earlier_in_the_batch_can_be_spent():
    decision = decide(Transfer(ALICE, CAROL, 100), Unlock(CAROL, "content-dave"))
    # content-dave's creator is frozen, so use a gift instead to spend it.
    assert_failed(decision.outcomes[1], WALLET_FROZEN)
    decision = decide(Transfer(ALICE, CAROL, 100), Gift(CAROL, BOB, 100))
    assert [o.ok for o in decision.outcomes] == [True, True]
    assert decision.outcomes[1].balances[CAROL] == (100, 0)


def test_deltas_omit_wallets_that_net_to_zero():
    decision = decide(Transfer(ALICE, BOB, 25), Transfer(BOB, ALICE, 25))
    assert [o.ok for o in decision.outcomes] == [True, True]
    assert decision.deltas == {}


def test_an_empty_batch():
    snap = make_snapshot()
    decision = decide_batch([], snap, NOW)
    assert decision.outcomes == []
    assert decision.deltas == {}
    assert decision.state == snap
    assert decision.state is not snap


def test_decide_batch_does_not_mutate_the_snapshot():
    snap = make_snapshot(unlocks={(BOB, CONTENT)})
    before = copy.deepcopy(snap)
    wallet_objects = dict(snap.wallets)
    decision = decide(
        Transfer(ALICE, BOB, 10), Unlock(ALICE, CONTENT), Subscribe(ALICE, CAROL), Renew(BOB, SUB, OLD_END),
        Gift(ALICE, CAROL, 5), TopUp(CAROL, 5, "p"), Credit(BOB, 5, "r"), Renew(BOB, SUB, OLD_END),
        snapshot=snap,
    )
    assert all(o.ok for o in decision.outcomes[:-1])
    assert snap == before
    assert all(snap.wallets[w] is obj for w, obj in wallet_objects.items())
    assert decision.state != snap
    assert decision.state.wallets[ALICE] is not snap.wallets[ALICE]
    assert decision.state.subscriptions[SUB] is not snap.subscriptions[SUB]


# --- property ------------------------------------------------------------------

USERS = [f"user{i}" for i in range(8)]
UNKNOWN = "user-unknown"
BATCH_SETTINGS = settings(max_examples=200, deadline=None, derandomize=False)


CODE = st.integers(0, 2**128 - 1)
OP_CODE = st.integers(0, 2**32 - 1)


@st.composite
def scenarios(draw):
    # Every record is packed into one integer read by `Digits` (drawing field by field
    # is several times slower); a zero digit is the plain case (active, balance 0...).
    def records(low, high):
        return [Digits(code) for code in draw(st.lists(CODE, min_size=low, max_size=high))]

    n_ops = draw(st.integers(0, 40))
    users = USERS[:draw(st.integers(3, 8))]
    wallets = {}
    for user, d in zip(users, records(len(users), len(users)), strict=True):
        wallets[user] = WalletState(d.number(0, 500), FROZEN if d.number(0, 5) == 5 else ACTIVE)
    (d,) = records(1, 1)
    wallets[PLATFORM_REVENUE] = WalletState(d.number(0, 100))
    wallets[PLATFORM_PROCESSING] = WalletState(d.number(0, 100))
    wallets[EXTERNAL_FUNDING] = WalletState(-sum(w.balance for w in wallets.values()))

    contents = {}
    for i, d in enumerate(records(1, 4)):
        cid = f"content{i}"
        contents[cid] = ContentInfo(cid, d.pick(users), d.number(1, 300), active=d.number(0, 6) != 6)
    plans = {}
    for d in records(0, 4):
        creator = d.pick(users)
        plan = Plan(creator, d.number(1, 200), d.number(1, 60), active=d.number(0, 6) != 6)
        plans.setdefault(creator, plan)
    unlocks = {(d.pick(users), d.pick(sorted(contents))) for d in records(0, 4) if contents}
    subscriptions = {}
    for i, d in enumerate(records(1, 3)):
        subscriber, creator = d.pick(users), d.pick(users)
        if subscriber == creator or any(
                (s.subscriber_id, s.creator_id) == (subscriber, creator) for s in subscriptions.values()):
            continue
        sid = f"sub{i}"
        expires = NOW + timedelta(days=d.number(-5, 30), milliseconds=d.number(0, 86_400_000))
        subscriptions[sid] = SubscriptionState(
            sid, subscriber, creator, d.number(1, 200), d.number(1, 60), d.pick([ACTIVE, ACTIVE, "expired"]),
            d.number(0, 3) != 3, expires, d.number(0, 3))
        if creator not in plans and d.number(0, 3) != 3:  # creators with subscribers mostly keep a plan
            plans[creator] = Plan(creator, d.number(1, 200), d.number(1, 60))
    snapshot = Snapshot(wallets, contents, unlocks, plans, subscriptions)

    # Operations: a kind, then ids from the users with occasional strangers.
    codes = draw(st.lists(OP_CODE, min_size=n_ops, max_size=n_ops))
    pools = {
        "user": [*users, *users, *users, UNKNOWN, PLATFORM_REVENUE, EXTERNAL_FUNDING],
        "content": [*sorted(contents), "content-unknown"],
        "creator": [*users, *sorted(plans), *sorted(plans)],
        "period_end": sorted(
            {s.expires_at for s in subscriptions.values()}
            | {s.expires_at + timedelta(days=s.period_days) for s in subscriptions.values()}
            | {NOW + timedelta(days=p.period_days) for p in plans.values()}
            | {NOW}
        ),
    }
    # Renewals mostly name a subscription and its current period end, as the beat would.
    renewable = {sid: (s.subscriber_id, s.expires_at, s.period_days) for sid, s in subscriptions.items()}
    jobs = []
    for i, code in enumerate(codes):
        job_id = f"job{i}"
        op = decode_operation(Digits(code), pools, renewable)
        if isinstance(op, Subscribe) and op.creator in plans and plans[op.creator].active:
            days = plans[op.creator].period_days
            renewable[job_id] = (op.subscriber, NOW + timedelta(days=days), days)
        elif isinstance(op, Renew) and op.subscription_id in renewable:
            subscriber, end, days = renewable[op.subscription_id]
            if op.period_end == end:
                renewable[op.subscription_id] = (subscriber, end + timedelta(days=days), days)
        jobs.append((job_id, op))
    return snapshot, jobs


class Digits:
    """Reads mixed-radix digits off an integer; shrinking the integer simplifies the operation."""

    def __init__(self, code):
        self.code = code

    def pick(self, options):
        self.code, index = divmod(self.code, len(options))
        return options[index]

    def number(self, low, high):
        return self.pick(range(low, high + 1))


def decode_operation(digits, pools, renewable):
    kind = digits.pick(["transfer", "unlock", "subscribe", "renew", "gift", "topup", "credit"])
    user = digits.pick(pools["user"])
    if kind == "transfer":
        return Transfer(user, digits.pick(pools["user"]), digits.number(1, 300))
    if kind == "unlock":
        return Unlock(user, digits.pick(pools["content"]))
    if kind == "subscribe":
        return Subscribe(user, digits.pick(pools["creator"]), digits.pick([True, False]))
    if kind == "renew":
        sid = digits.pick([*renewable, *renewable, "sub-unknown"])
        period_end = digits.pick(pools["period_end"])
        if sid in renewable:
            subscriber, end, _ = renewable[sid]
            if digits.number(0, 4) != 4:  # mostly the real subscriber
                user = subscriber
            if digits.number(0, 3) != 3:  # mostly the current period end
                period_end = end
        return Renew(user, sid, period_end)
    if kind == "gift":
        return Gift(user, digits.pick(pools["user"]), digits.number(1, 300))
    if kind == "topup":
        return TopUp(user, digits.number(1, 300), "pi")
    return Credit(user, digits.number(1, 300), "goodwill")


def total(state):
    return sum(w.balance for w in state.wallets.values())


@BATCH_SETTINGS
@given(scenario=scenarios())
def test_batch_invariants(scenario):
    snapshot, jobs = scenario
    pristine = copy.deepcopy(snapshot)
    decision = decide_batch(jobs, snapshot, NOW)
    assert snapshot == pristine
    assert [o.job_id for o in decision.outcomes] == [job_id for job_id, _ in jobs]
    assert [o.kind for o in decision.outcomes] == [op.kind for _, op in jobs]

    settled_sum: Counter[str] = Counter()
    for outcome in decision.outcomes:
        if isinstance(outcome, Settled):
            assert sum(e.amount for e in outcome.entries) == 0, outcome
            assert all(type(e.amount) is int for e in outcome.entries)
            for entry in outcome.entries:
                settled_sum[entry.wallet_id] += entry.amount
            for wallet_id, (before, after) in outcome.balances.items():
                moved = sum(e.amount for e in outcome.entries if e.wallet_id == wallet_id)
                assert after - before == moved
        else:
            assert outcome.code in FAILURE_MESSAGES
            for effect in outcome.effects:
                assert isinstance(effect, ExpireSubscription)
                assert outcome.kind == "renew"

    for wallet_id, wallet in decision.state.wallets.items():
        if wallet_id != EXTERNAL_FUNDING:
            assert wallet.balance >= 0, (wallet_id, wallet.balance)
    assert sum(decision.deltas.values()) == 0
    assert decision.deltas == {w: d for w, d in settled_sum.items() if d}
    assert total(decision.state) == total(snapshot) == 0
    for wallet_id, wallet in decision.state.wallets.items():
        start = snapshot.wallets[wallet_id].balance if wallet_id in snapshot.wallets else 0
        assert wallet.balance == start + decision.deltas.get(wallet_id, 0)

    # Entitlements: nobody holds a content twice or two active subscriptions to one creator.
    grants = Counter((e.user_id, e.content_id) for o in decision.outcomes for e in o.effects
                     if isinstance(e, GrantUnlock))
    assert all(n == 1 and pair not in snapshot.unlocks for pair, n in grants.items())
    active = Counter((s.subscriber_id, s.creator_id) for s in decision.state.subscriptions.values()
                     if s.status == ACTIVE)
    assert all(n == 1 for n in active.values())

    # Deciding the operations one at a time gives the same outcomes and state.
    state = snapshot
    one_by_one = []
    for job in jobs:
        step = decide_batch([job], state, NOW)
        one_by_one.extend(step.outcomes)
        state = step.state
    assert one_by_one == decision.outcomes
    assert balances(state) == balances(decision.state)
    assert state == decision.state
