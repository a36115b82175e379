"""Facts that never change once true, remembered per process for the accept path.

A user who exists keeps existing; a content keeps its creator. The web process reads
such a fact from the store once and answers from memory afterwards (issue 24, lever 3:
no store read on the accept path for facts that do not change). Positive only: an
absent fact is read every time, so a user or content created a moment ago is found at
once. Bounded (LRU) and counted (``purser_cache_lookups_total{cache=...}``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from cachetools import LRUCache

from infra import metrics

V = TypeVar("V")


class KnownFacts(Generic[V]):
    """A bounded, thread-safe, positive-only memory of ``key -> value`` facts."""

    def __init__(self, name: str, max_entries: int) -> None:
        assert max_entries > 0
        self.name = name
        self._lock = threading.Lock()
        self._facts: LRUCache[str, V] = LRUCache(maxsize=max_entries)

    def get(self, key: str, read: Callable[[], V | None]) -> V | None:
        """The remembered value of ``key``, else ``read()`` (remembered unless None)."""
        with self._lock:
            value = self._facts.get(key)
        metrics.record_cache_lookup(self.name, hit=value is not None)
        if value is not None:
            return value
        value = read()
        if value is not None:
            with self._lock:
                self._facts[key] = value
        return value

    def clear(self) -> None:
        """Forget everything (tests that drop the database)."""
        with self._lock:
            self._facts.clear()
