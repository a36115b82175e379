"""A worker whose consumer stopped taking messages is restarted in place.

Celery with Redis has a recurring class of defect (celery/celery#8030, #9054, #10205,
#10302, the last reopened against 5.6.3): after the broker connection is lost and
re-established, the worker's consumer sometimes never reads from its queues again,
with no error logged. The process stays up and its heartbeat keeps beating, so
readiness cannot see it, and jobs wait for ever. The sweeper cannot help: its
doorbells land in the same unread queues.

The rule, judged from the worker's main process every few seconds: a queue this worker
consumes has held messages for ``CONSUMER_STALL_SECONDS``, the worker has received
nothing for as long, and a pool process is free to take one. A healthy worker with a
free process takes a waiting message within milliseconds, so that is a stalled consumer
whatever the cause. It is restarted the way Celery recovers from a lost connection:
a connection error raised inside its event loop makes the consumer reconnect, declare
its queues and consume again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery import signals
from celery.worker import state as worker_state

from infra import metrics
from infra.config import get_settings
from infra.redis_client import get_redis

log = logging.getLogger("purser.worker")

_CHECKS_PER_WINDOW = 6  # how often the rule is judged within one stall window


@dataclass
class StallRule:
    """The stall rule over successive observations (pure: the clock is passed in)."""

    stall_seconds: float
    waiting_since: float | None = None
    last_received: float = 0.0

    def received(self, now: float) -> None:
        self.last_received = now

    def stalled(self, now: float, *, waiting: bool, free: bool) -> bool:
        """Whether the consumer must be restarted, given what is seen at ``now``."""
        assert self.stall_seconds > 0
        if not waiting:
            self.waiting_since = None
            return False
        if self.waiting_since is None:
            self.waiting_since = now
        return (free and now - self.waiting_since >= self.stall_seconds
                and now - self.last_received >= self.stall_seconds)

    def restarted(self, now: float) -> None:
        """A restart takes time: judge afresh after it, as if a message had just come."""
        self.waiting_since = None
        self.last_received = now


_rule: StallRule | None = None


def _on_received(**_: Any) -> None:
    if _rule is not None:
        _rule.received(time.monotonic())


def _queues_waiting(queues: list[str]) -> bool:
    """Whether any of ``queues`` holds a message (kombu keeps a Redis list per queue)."""
    with get_redis().pipeline(transaction=False) as pipe:
        for name in queues:
            pipe.llen(name)
        return any(pipe.execute())


def _has_free_process(consumer: Any) -> bool:
    concurrency = getattr(getattr(consumer, "controller", None), "concurrency", None)
    if not isinstance(concurrency, int):
        return True  # unknown: the received-nothing condition still guards the rule
    return len(worker_state.reserved_requests) < concurrency


def restart_consumer(consumer: Any) -> None:
    """Make ``consumer`` reconnect, from any thread, by Celery's own recovery path.

    A connection error raised by a timer propagates out of the event loop to the
    consumer, which reconnects (``hub.propagate_errors``). Raised from a ``call_soon``
    callback instead, it would drop the other callbacks of its batch, the pool's among
    them, and leave received tasks undispatched. Timers are not thread-safe to add, so
    the loop's own thread adds it."""
    hub = consumer.hub
    errors = tuple(consumer.connection_errors)
    error = ConnectionError if issubclass(ConnectionError, errors) else errors[0]

    def fail() -> None:
        raise error("purser watchdog: the consumer stopped taking messages; reconnecting it")

    hub.call_soon(hub.call_later, 0, fail)


def _judge(consumer: Any, rule: StallRule, queues: list[str]) -> None:
    now = time.monotonic()
    if not rule.stalled(now, waiting=_queues_waiting(queues), free=_has_free_process(consumer)):
        return
    # ERROR reaches Sentry: a worker that had to be revived is worth a look.
    log.error("consumer stopped taking messages with its queues full and a process free; restarting it",
              extra={"stallSeconds": rule.stall_seconds, "queues": queues,
                     "waitingFor": round(now - (rule.waiting_since or now), 1)})
    metrics.record_consumer_restart()
    restart_consumer(consumer)
    rule.restarted(now)


def _loop(consumer: Any, rule: StallRule, queues: list[str], stop: threading.Event) -> None:
    while not stop.wait(rule.stall_seconds / _CHECKS_PER_WINDOW):
        try:
            _judge(consumer, rule, queues)
        except Exception:  # noqa: BLE001 - Redis may be down: the consumer is reconnecting anyway
            log.debug("consumer watchdog could not judge", exc_info=True)


def start(consumer: Any, stop: threading.Event) -> None:
    """Watch ``consumer`` (the ``worker_ready`` signal's sender) until ``stop`` is set."""
    global _rule
    settings = get_settings()
    hub = getattr(consumer, "hub", None)
    if hub is None:  # a pool without an event loop (solo): nothing to restart
        return
    if settings.fault_deaf_consumer and not settings.is_production:
        hub.call_soon(_deafen, consumer)
    if settings.consumer_stall_seconds <= 0:
        return
    queues = sorted(consumer.app.amqp.queues.consume_from)
    _rule = StallRule(settings.consumer_stall_seconds, last_received=time.monotonic())
    signals.task_received.connect(_on_received, weak=False)
    threading.Thread(target=_loop, args=(consumer, _rule, queues, stop), daemon=True,
                     name="purser-consumer-watchdog").start()


def _deafen(consumer: Any) -> None:
    """TEST-ONLY fault injection (PURSER_FAULT_DEAF_CONSUMER=1, refused in production):
    the consumer stops reading the broker, as the upstream defect leaves it, until it
    reconnects. Reaches into kombu's Redis poller, where that defect lives: its
    ``on_poll_start`` tick re-adds the sockets to the event loop, so it goes too; the
    reconnection registers a new one."""
    hub = consumer.hub
    # By module: the prefork pool's own tick (which hands tasks to its processes) has the same name.
    for callback in [cb for cb in hub.on_tick if getattr(cb, "__module__", "") == "kombu.transport.redis"]:
        hub.on_tick.discard(callback)
    for fd in list(consumer.connection.transport.cycle._fd_to_chan):
        hub.remove_reader(fd)
    log.warning("fault injection: the consumer no longer reads the broker")
