"""One Redis pub/sub subscription kept alive for the life of a process.

A :class:`Listener` runs in a daemon thread (a greenlet under gunicorn's gevent
worker, whose monkey patching makes ``threading`` cooperative), hands every message
of its channel to ``on_message``, and reconnects with backoff whenever Redis goes
away. After every (re)subscription it calls ``on_subscribed``: whatever was published
while it was not subscribed is lost, so the owner must treat that instant as "anything
may have happened" (the waits hub wakes every waiter to read again, the role cache
forgets every stored role). Messages are hints; the store stays the truth.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

log = logging.getLogger("purser.pubsub")

RECONNECT_MIN, RECONNECT_MAX = 0.2, 5.0
LISTEN_TIMEOUT = 1.0
WARN_EVERY_SECONDS = 60.0  # a Redis outage logs one warning a minute, not one per retry


def _ignore(_: str) -> None:
    pass


class Listener:
    """Subscribe to ``channel`` on ``redis_url`` until :meth:`stop`.

    ``on_event`` is told ``"message"``, ``"subscribed"`` and ``"error"`` (metrics);
    ``what`` names the subscription in the warning an outage logs.
    """

    def __init__(self, redis_url: str, channel: str, on_message: Callable[[bytes], None],
                 on_subscribed: Callable[[], None], *, what: str, on_event: Callable[[str], None] = _ignore,
                 logger: logging.Logger = log) -> None:
        self.redis_url = redis_url
        self.channel = channel
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self.on_event = on_event
        self.what = what
        self.log = logger
        self.subscribed = threading.Event()
        self.messages = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._warned = -WARN_EVERY_SECONDS

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Listener:
        """Start listening (again, if the thread ended); cheap when already running."""
        if self.running:
            return self
        with self._lock:
            if not self.running:
                self._stop.clear()
                name = "purser-" + self.what.replace(" ", "-")
                self._thread = threading.Thread(target=self._run, name=name, daemon=True)
                self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.subscribed.clear()

    def _run(self) -> None:
        backoff = RECONNECT_MIN
        while not self._stop.is_set():
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=None,
                                          socket_keepalive=True, health_check_interval=30)
            pubsub = client.pubsub(ignore_subscribe_messages=False)
            try:
                pubsub.subscribe(self.channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=LISTEN_TIMEOUT)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        self.subscribed.set()
                        backoff = RECONNECT_MIN
                        self.on_event("subscribed")
                        self.on_subscribed()
                    elif message["type"] == "message":
                        self.messages += 1
                        self.on_message(message["data"])
                        self.on_event("message")
            except Exception as exc:  # noqa: BLE001 - reconnect whatever went wrong
                self.subscribed.clear()
                self.on_event("error")
                if not self._stop.is_set() and time.monotonic() - self._warned > WARN_EVERY_SECONDS:
                    self._warned = time.monotonic()
                    self.log.warning(f"{self.what} subscription lost; reconnecting",
                                     extra={"error": f"{type(exc).__name__}: {exc}"[:300], "retryIn": backoff})
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except Exception:  # noqa: BLE001
                    pass
