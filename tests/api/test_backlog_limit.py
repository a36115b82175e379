"""Issue 22: a partition behind by more than BACKLOG_MAX_SECONDS refuses new jobs with 503.

The web reads what settlers and the sweeper publish (infra/backlog.py), never the
store; these tests publish a partition's load themselves, as a settler would, and
check what the API does with it: 503 BACKLOG_FULL with Retry-After, no job and no
idempotency claim (the same key is a first attempt later), admins exempt, an unknown
or stale load accepted. The last test lets the real worker publish after its batch.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from infra import backlog
from infra.redis_client import get_redis
from ledger.operations import partition_of
from tests.api.helpers import assert_problem
from tests.support.invariants import assert_money_invariants
from tests.support.waiting import wait_for

LIMIT_SECONDS = 5.0


def _partition(user_id: str) -> int:
    from infra.config import get_settings

    return partition_of(user_id, get_settings().ledger_partitions)


@pytest.fixture
def api(fresh_db: Any, session_worker: Any) -> Any:
    """The suites' Api over an app whose limit is the default 5 s (the test environment sets 60)."""
    import dataclasses

    from api import create_app
    from infra.config import get_settings
    from tests.api.helpers import Api
    from tests.support.client import ApiClient

    app = create_app(dataclasses.replace(get_settings(), backlog_max_seconds=LIMIT_SECONDS))
    with app.test_client() as flask_client:
        yield Api(ApiClient(flask_client=flask_client), fresh_db)


def _publish(partition: int, queued: int, rate: float = 10.0, age: float = 0.0, oldest: float = 0.5) -> None:
    backlog.publish(get_redis(), backlog.Load(partition, queued, oldest, rate, time.time() - age))
    time.sleep(backlog.REFRESH_SECONDS + 0.1)  # the web process's copy is this old at most


def _settler_done(partition: int, since: float) -> None:
    """Wait for the worker's own publication after its last batch of ``partition`` (it follows
    the commit that the client saw), so it cannot overwrite what the test publishes next."""
    wait_for(lambda: (load := backlog.read(get_redis(), partition)) is not None and load.drained_at >= since
             and load.queued == 0, timeout=10, what="the settler's publication")
    time.sleep(0.2)


def _shed_count(partition: int) -> float:
    from infra import metrics

    return metrics.JOBS_SHED.labels(str(partition))._value.get()


def test_a_full_partition_refuses_keeps_nothing_and_takes_the_same_key_later(api: Any, fresh_db: Any) -> None:
    alice, bob = api.user(), api.user()
    partition = _partition(alice.id)
    started = time.time()
    api.fund(alice, 1000)
    _settler_done(partition, started)
    jobs_before = fresh_db.jobs.count_documents({})
    shed_before = _shed_count(partition)
    _publish(partition, queued=1000, rate=10.0)

    body = {"receiverId": bob.id, "amount": 300}
    r = api.money("/api/wallet/transfer", alice, body, key="backlogged-1")
    problem = assert_problem(r, 503, "BACKLOG_FULL")
    assert r.headers["Retry-After"] == str(backlog.RETRY_AFTER_MAX), r.headers  # 901 over at 10/s
    assert "same Idempotency-Key" in problem["detail"]
    assert fresh_db.jobs.count_documents({}) == jobs_before
    assert fresh_db.jobs.count_documents({"idem.key": "backlogged-1"}) == 0
    assert _shed_count(partition) == shed_before + 1

    _publish(partition, queued=0)
    job = api.expect_settled(alice, api.money("/api/wallet/transfer", alice, body, key="backlogged-1"))
    assert job["result"] == {"amount": 300, "receiverId": bob.id}
    assert (api.balance(alice), api.balance(bob)) == (700, 300)
    assert_money_invariants(fresh_db)


def test_the_limit_follows_the_partitions_rate(api: Any, fresh_db: Any) -> None:
    alice, bob = api.user(), api.user()
    api.fund(alice, 100)
    partition = _partition(alice.id)
    # 400 queued at 100 jobs/s is 4 s of work: under the 5 s limit (500 jobs).
    _publish(partition, queued=400, rate=100.0)
    started = time.time()
    api.expect_settled(alice, api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 1}))
    _settler_done(partition, started)
    # The same 400 at 50 jobs/s is 8 s: over (250 jobs).
    _publish(partition, queued=400, rate=50.0)
    r = api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 1})
    assert_problem(r, 503, "BACKLOG_FULL")
    assert r.headers["Retry-After"] == "4", r.headers  # 151 over at 50/s: 3.02 s


def test_admins_are_exempt_and_an_unknown_or_stale_load_is_accepted(api: Any, fresh_db: Any) -> None:
    admin, alice, bob = api.user("admin"), api.user(), api.user()
    partition = _partition(alice.id)
    _publish(partition, queued=10_000)
    r = api.money("/api/admin/credit", admin, {"userId": alice.id, "amount": 500, "reason": "goodwill"})
    api.expect_settled(admin, r)

    _publish(partition, queued=10_000, age=backlog.STALE_SECONDS + 5)  # nobody has published for a minute
    api.expect_settled(alice, api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 5}))
    get_redis().hdel(backlog.KEY, str(partition))
    time.sleep(backlog.REFRESH_SECONDS + 0.1)
    api.expect_settled(alice, api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 5}))
    assert api.balance(alice) == 490


def test_the_settler_publishes_its_partition_after_a_batch(api: Any, fresh_db: Any) -> None:
    alice = api.user()
    partition = _partition(alice.id)
    get_redis().hdel(backlog.KEY, str(partition))
    started = time.time()
    api.fund(alice, 250)
    load = wait_for(lambda: backlog.read(get_redis(), partition), timeout=10, what="the settler's publication")
    assert load is not None and load.partition == partition
    assert load.queued == 0 and load.oldest_age == 0.0
    assert load.rate > 0 and started <= load.at <= time.time()


def test_a_partition_whose_oldest_job_waited_the_limit_refuses_whatever_its_count(api: Any, fresh_db: Any) -> None:
    alice, bob = api.user(), api.user()
    partition = _partition(alice.id)
    # 10 jobs at 100 jobs/s is far under the count limit, but the oldest has waited 6 s.
    _publish(partition, queued=10, rate=100.0, oldest=6.0)
    assert_problem(api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 1}), 503,
                   "BACKLOG_FULL")
    # A cold partition (no rate measured yet) is judged by age alone: 5,000 young jobs pass.
    _publish(partition, queued=5000, rate=0.0, oldest=0.5)
    r = api.money("/api/wallet/transfer", alice, {"receiverId": bob.id, "amount": 1})
    assert r.status == 202, r
