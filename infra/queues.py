"""Queue names and the worker heartbeat, shared by workers and the web without Celery.

The web's readiness check reads what workers write here; keeping both sides on
these names means a renamed queue cannot silently make every worker look idle.

Heartbeats live in two sorted sets, one per worker role: ``ledger`` (nodes that
consume at least one ``ledger.<p>`` queue, i.e. settle money) and ``other`` (the
housekeeping node). Each member is a node name scored by the Redis server's clock
at its last beat, so a probe is one bounded ``ZCOUNT`` over the last
:data:`WORKER_HEARTBEAT_TTL` seconds, whatever the size of the keyspace, and no
host's clock is compared with another's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_QUEUE = "purser.default"
# Webhook deliveries wait on other people's servers (up to 15 s each): their own queue
# and worker role, so a slow receiver holds neither a settler nor beat's housekeeping.
WEBHOOK_QUEUE = "purser.webhooks"
LEDGER_QUEUE_PREFIX = "ledger."

HEARTBEAT_KEY_PREFIX = "purser:heartbeats:"
ROLE_LEDGER = "ledger"
ROLE_OTHER = "other"
# A node is alive while its last beat is younger than this (it beats every TTL/3).
WORKER_HEARTBEAT_TTL = 15
# Members older than this are pruned by the next beat; the set itself expires after it.
HEARTBEAT_RETENTION = 4 * WORKER_HEARTBEAT_TTL
# Worker names shown to admins by readiness, per role (the count is exact).
HEARTBEAT_NAMES_SHOWN = 5
# Heartbeat value of a node whose queues could not be read, and that of older workers.
UNKNOWN_QUEUES = ("*", "1")

# KEYS: own role's set, the other role's set. ARGV: node, retention seconds.
_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# KEYS: ledger set, other set. ARGV: ttl seconds, names wanted (0: the ledger count only).
_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local since = now - tonumber(ARGV[1])
local ledger = redis.call('ZCOUNT', KEYS[1], since, '+inf')
local n = tonumber(ARGV[2])
if n == 0 then return {ledger} end
local other = redis.call('ZCOUNT', KEYS[2], since, '+inf')
local ledger_names = redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', since, 'LIMIT', 0, n)
local other_names = redis.call('ZREVRANGEBYSCORE', KEYS[2], '+inf', since, 'LIMIT', 0, n)
return {ledger, other, ledger_names, other_names}
"""


def partition_queue(partition: int) -> str:
    return f"{LEDGER_QUEUE_PREFIX}{partition}"


def consumes_ledger(queues: str) -> bool:
    """Whether a heartbeat's comma-separated queue list includes ledger queues (unknown: assume so)."""
    return queues in UNKNOWN_QUEUES or any(q.startswith(LEDGER_QUEUE_PREFIX) for q in queues.split(","))


def heartbeat_key(role: str) -> str:
    return f"{HEARTBEAT_KEY_PREFIX}{role}"


def worker_role(queues: str) -> str:
    """``ledger`` for a node that settles money (consumes a ledger queue), else ``other``."""
    return ROLE_LEDGER if consumes_ledger(queues) else ROLE_OTHER


def beat(redis: Any, node: str, queues: str) -> None:
    """Record that ``node`` (consuming ``queues``, comma-separated) is alive now."""
    role = worker_role(queues)
    other = ROLE_OTHER if role == ROLE_LEDGER else ROLE_LEDGER
    redis.register_script(_BEAT)(keys=[heartbeat_key(role), heartbeat_key(other)],
                                 args=[node, HEARTBEAT_RETENTION])


def forget(redis: Any, node: str) -> None:
    """Remove ``node``'s heartbeat (clean shutdown)."""
    pipe = redis.pipeline(transaction=False)
    for role in (ROLE_LEDGER, ROLE_OTHER):
        pipe.zrem(heartbeat_key(role), node)
    pipe.execute()


@dataclass(frozen=True)
class Liveness:
    """Nodes that beat within the TTL: exact counts, names only when asked (at most a few)."""

    ledger: int
    other: int | None = None
    ledger_names: list[str] = field(default_factory=list)
    other_names: list[str] = field(default_factory=list)


def _names(raw: Any) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in (raw or [])]


def live_workers(redis: Any, *, names: int = 0, ttl: int = WORKER_HEARTBEAT_TTL) -> Liveness:
    """How many ledger (and, with ``names`` > 0, other) nodes are alive: one bounded round trip."""
    reply = redis.register_script(_LIVE)(keys=[heartbeat_key(ROLE_LEDGER), heartbeat_key(ROLE_OTHER)],
                                         args=[ttl, max(0, names)])
    if names <= 0:
        return Liveness(int(reply[0]))
    return Liveness(int(reply[0]), int(reply[1]), _names(reply[2]), _names(reply[3]))
