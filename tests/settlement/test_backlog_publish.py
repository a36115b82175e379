"""Issue 22: the sweeper publishes every partition's backlog, a settler's silence lowers its rate."""

from __future__ import annotations

import time
from typing import Any

from infra import backlog
from infra.config import get_settings
from infra.redis_client import get_redis
from ledger.operations import Credit
from tests.support.seeding import add_users
from tests.support.settle import queue_jobs


def test_the_sweeper_publishes_what_each_partition_holds(fresh_db: Any) -> None:
    from tasks.maintenance import publish_backlogs

    settings = get_settings()
    redis = get_redis()
    redis.delete(backlog.KEY)
    busy, other = 1, 2
    users = add_users(fresh_db, 2, busy)
    old = queue_jobs(fresh_db, [Credit(users[n % 2], 1, "queued") for n in range(7)])
    queue_jobs(fresh_db, [Credit(add_users(fresh_db, 1, other)[0], 1, "queued")])
    time.sleep(0.2)
    # A settler measured 40 jobs/s on the busy partition, long enough ago to count as silent.
    silent_after = max(2.0 * settings.sweep_interval_seconds, settings.settle_slice_seconds)
    then = time.time() - silent_after - 1
    backlog.publish(redis, backlog.Load(busy, 3, 0.0, 40.0, then, drained_at=then))

    publish_backlogs(fresh_db, settings)
    loads = backlog.read_all(redis)
    assert set(loads) == set(range(settings.ledger_partitions))
    assert (loads[busy].queued, loads[other].queued) == (7, 1)
    assert all(load.queued == 0 and load.oldest_age == 0 for p, load in loads.items() if p not in (busy, other))
    age = time.time() - old[0]["createdAt"].timestamp()
    assert 0.2 <= loads[busy].oldest_age <= age + 0.5
    assert loads[busy].rate == 20.0  # halved: jobs wait and no settler has published
    assert loads[other].rate == 0.0

    publish_backlogs(fresh_db, settings)
    assert backlog.read(redis, busy).rate == 10.0  # still silent: the sweeper's own tick is no sign of life
