"""The pure rules of the backlog limit (infra/backlog.py): drain rate, limit, Retry-After."""

from __future__ import annotations

import pytest

from infra.backlog import RETRY_AFTER_MAX, RETRY_AFTER_MIN, Limits, Load, after_batch, drain_rate, observed, retry_after

LIMITS = Limits(max_seconds=5.0, min_jobs=100)


def load(queued: int, rate: float, at: float = 1000.0, partition: int = 3) -> Load:
    return Load(partition, queued, 0.0, rate, at, drained_at=at)


def test_a_backlogged_partition_is_measured_on_the_wall_clock() -> None:
    # 200 jobs 4 s after an observation that already saw a backlog: 50 jobs/s, waiting included.
    assert drain_rate(load(500, 0.0), 200, busy_seconds=0.5, now=1004.0) == 50.0
    # Averaged with the previous rate, the newest sample weighing half.
    assert drain_rate(load(500, 30.0), 200, busy_seconds=0.5, now=1004.0) == 40.0


def test_from_an_empty_queue_only_the_batch_rate_is_known() -> None:
    assert drain_rate(load(0, 0.0), 100, busy_seconds=0.5, now=1004.0) == 200.0
    assert drain_rate(None, 100, busy_seconds=0.25, now=1004.0) == 400.0


def test_nothing_settled_from_empty_keeps_the_rate() -> None:
    assert drain_rate(load(0, 42.0), 0, busy_seconds=0.0, now=1004.0) == 42.0
    assert drain_rate(None, 0, busy_seconds=0.0, now=1004.0) == 0.0


def test_a_batch_publishes_what_is_left_and_the_new_rate() -> None:
    after = after_batch(load(300, 100.0), 3, 200, 0.5, queued=100, oldest_age=1.5, now=1002.0)
    assert after == Load(3, 100, 1.5, 100.0, 1002.0, drained_at=1002.0)


def test_the_limit_is_the_drain_in_max_seconds_never_below_the_floor() -> None:
    assert LIMITS.jobs(load(0, 80.0)) == 400
    assert LIMITS.jobs(load(0, 10.0)) == 100
    assert LIMITS.jobs(load(0, 0.0)) == 100
    assert not Limits(0, 100).enabled and LIMITS.enabled


@pytest.mark.parametrize(("queued", "rate", "expected"), [
    (401, 80.0, RETRY_AFTER_MIN),  # 2 over the limit at 80/s: well under a second
    (900, 80.0, 7),  # 501 over at 80/s: 6.3 s
    (10_000, 80.0, RETRY_AFTER_MAX),
    (150, 0.0, 5),  # no rate known: the limit's own horizon
])
def test_retry_after_is_the_expected_wait_bounded(queued: int, rate: float, expected: int) -> None:
    assert retry_after(load(queued, rate), LIMITS) == expected


def test_a_silent_partition_with_work_loses_half_its_rate_per_tick() -> None:
    prev = load(500, 80.0, at=1000.0)
    first = observed(prev, 3, 520, 12.0, now=1011.0, silent_after=10.0)
    assert first == Load(3, 520, 12.0, 40.0, 1011.0, drained_at=1000.0)
    # The sweeper's own publication is no sign of life: the next tick halves again.
    assert observed(first, 3, 530, 17.0, now=1016.0, silent_after=10.0).rate == 20.0
    # A settler published recently, or nothing is queued: the settlers' rate stands.
    assert observed(prev, 3, 520, 12.0, now=1005.0, silent_after=10.0).rate == 80.0
    assert observed(prev, 3, 0, 0.0, now=1011.0, silent_after=10.0).rate == 80.0
    assert observed(None, 3, 7, 1.0, now=1011.0, silent_after=10.0) == Load(3, 7, 1.0, 0.0, 1011.0)


def test_the_wall_clock_sample_runs_from_the_last_settler_not_the_sweeper() -> None:
    swept = Load(3, 500, 5.0, 30.0, at=1003.0, drained_at=1000.0)
    assert drain_rate(swept, 200, busy_seconds=0.5, now=1004.0) == 40.0  # 200 in 4 s, averaged with 30


def test_a_load_survives_its_json() -> None:
    original = Load(5, 123, 4.5, 67.25, 1_700_000_000.5, drained_at=1_699_999_999.0)
    assert Load.from_json(original.to_json()) == original
    assert Load.from_json(original.to_json().encode()) == original
