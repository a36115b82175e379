"""The pure rules of the backlog limit (infra/backlog.py): drain rate, limit, Retry-After."""

from __future__ import annotations

import pytest

from infra.backlog import (
    RETRY_AFTER_MAX,
    RETRY_AFTER_MIN,
    Limits,
    Load,
    after_batch,
    observed,
    retry_after,
    waited,
)

LIMITS = Limits(max_seconds=5.0, min_jobs=100)


def load(queued: int, rate: float, at: float = 1000.0, partition: int = 3) -> Load:
    return Load(partition, queued, 0.0, rate, at, drained_at=at)


def test_the_first_batch_seeds_the_rate_with_its_own_speed() -> None:
    first = after_batch(None, 3, 100, 0.25, queued=40, oldest_age=0.5, now=1000.0)
    assert first.rate == 400.0  # an upper bound, until a window closes
    assert (first.window_start, first.window_settled) == (1000.0, 0)  # backlog left: a window opens


def test_a_window_of_uninterrupted_backlog_measures_the_wall_clock_rate() -> None:
    # Two batches in one turn, then the partition waits for a free process: the window
    # spans both the work and the wait, as a queued job does.
    seeded = after_batch(None, 3, 100, 0.25, queued=300, oldest_age=1.0, now=1000.0)
    second = after_batch(seeded, 3, 100, 0.25, queued=250, oldest_age=1.2, now=1000.3)
    assert second.rate == 400.0 and second.window_settled == 100  # 0.3 s: too short to sample
    third = after_batch(second, 3, 100, 0.25, queued=260, oldest_age=2.0, now=1004.0)
    # 200 jobs in 4 s since the window opened: 50/s, averaged with the 400/s seed.
    assert third.rate == 225.0 and (third.window_start, third.window_settled) == (1004.0, 0)
    fourth = after_batch(third, 3, 100, 0.25, queued=270, oldest_age=2.0, now=1008.0)
    assert fourth.rate == 0.5 * 25.0 + 0.5 * 225.0  # 100 in 4 s


def test_an_emptied_queue_closes_the_window() -> None:
    busy = Load(3, 60, 1.0, 50.0, 1000.0, drained_at=1000.0, window_start=1000.0, window_settled=0)
    # The backlog lasted until this batch emptied it: 60 jobs in 3 s is a sample; the window closes.
    emptied = after_batch(busy, 3, 60, 0.3, queued=0, oldest_age=0.0, now=1003.0)
    assert emptied.rate == 35.0 and (emptied.window_start, emptied.window_settled) == (0.0, 0)
    # Idle time is never counted: the next window opens at the next batch that leaves a backlog.
    again = after_batch(emptied, 3, 10, 0.1, queued=5, oldest_age=0.1, now=1010.0)
    assert again.rate == 35.0 and (again.window_start, again.window_settled) == (1010.0, 0)
    short = after_batch(emptied, 3, 10, 0.1, queued=0, oldest_age=0.0, now=1010.0)
    assert short.rate == 35.0 and short.window_start == 0.0  # kept up: nothing learnt about capacity


def test_a_batch_publishes_what_is_left() -> None:
    after = after_batch(load(300, 100.0), 3, 200, 0.5, queued=100, oldest_age=1.5, now=1002.0)
    assert (after.queued, after.oldest_age, after.at, after.drained_at) == (100, 1.5, 1002.0, 1002.0)


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
    assert (first.queued, first.oldest_age, first.rate, first.at, first.drained_at) == (520, 12.0, 40.0, 1011.0, 1000.0)
    # The sweeper's own publication is no sign of life: the next tick halves again.
    assert observed(first, 3, 530, 17.0, now=1016.0, silent_after=10.0).rate == 20.0
    # A settler published recently, or nothing is queued: the settlers' rate stands.
    assert observed(prev, 3, 520, 12.0, now=1005.0, silent_after=10.0).rate == 80.0
    assert observed(prev, 3, 0, 0.0, now=1011.0, silent_after=10.0).rate == 80.0
    assert observed(None, 3, 7, 1.0, now=1011.0, silent_after=10.0) == Load(3, 7, 1.0, 0.0, 1011.0)


def test_the_sweeper_keeps_the_settlers_window() -> None:
    settled = Load(3, 500, 5.0, 30.0, at=1000.0, drained_at=1000.0, window_start=999.0, window_settled=40)
    swept = observed(settled, 3, 520, 6.0, now=1003.0, silent_after=10.0)
    assert (swept.window_start, swept.window_settled, swept.drained_at) == (999.0, 40, 1000.0)
    assert (swept.queued, swept.at) == (520, 1003.0)


def test_a_load_survives_its_json() -> None:
    original = Load(5, 123, 4.5, 67.25, 1_700_000_000.5, drained_at=1_699_999_999.0,
                    window_start=1_699_999_990.0, window_settled=17)
    assert Load.from_json(original.to_json()) == original
    assert Load.from_json(original.to_json().encode()) == original


def test_the_oldest_job_keeps_ageing_after_the_count() -> None:
    counted = Load(3, 12, 1.5, 40.0, at=1000.0, drained_at=1000.0)
    assert waited(counted, 1000.0) == 1.5
    assert waited(counted, 1004.0) == 5.5  # over a 5 s limit although 12 jobs are under 200
    assert waited(Load(3, 0, 0.0, 40.0, at=1000.0), 1010.0) == 0.0  # nothing was queued
