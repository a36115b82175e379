"""Queue names and the worker heartbeat, shared by workers and the web without Celery.

The web's readiness check reads what workers write here; keeping both sides on
these names means a renamed queue cannot silently make every worker look idle.
"""

from __future__ import annotations

DEFAULT_QUEUE = "purser.default"
LEDGER_QUEUE_PREFIX = "ledger."

WORKER_HEARTBEAT_PREFIX = "purser:worker:"
WORKER_HEARTBEAT_TTL = 15
# Heartbeat value of a node whose queues could not be read, and that of older workers.
UNKNOWN_QUEUES = ("*", "1")


def partition_queue(partition: int) -> str:
    return f"{LEDGER_QUEUE_PREFIX}{partition}"


def consumes_ledger(queues: str) -> bool:
    """Whether a heartbeat's comma-separated queue list includes ledger queues (unknown: assume so)."""
    return queues in UNKNOWN_QUEUES or any(q.startswith(LEDGER_QUEUE_PREFIX) for q in queues.split(","))
