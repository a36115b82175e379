"""Locust side of the arrival-rate profile (``LOAD_PROFILE=rate``): an open arrival feed and its recorder.

Locust is a closed model (a user runs its next task when the last one ended), so
this profile turns its users into a pool of workers: one greenlet offers task
arrivals as a Poisson process at the current phase's rate (``rate_plan``), and a
user's ``wait_time`` blocks until it takes the next arrival. The rate therefore
does not fall when answers slow down, as long as a user is free; when none is, the
arrival waits and its lag is recorded (``late`` in the report: the pool was too
small, raise ``LOAD_RATE_HEADROOM``). The pool (every user logged in once, in
``on_start``) is spawned during the warm-up and held to the end.

Environment: ``LOAD_RATE_SCALE``, ``LOAD_DURATION_SCALE`` (multiply the phases'
rates and durations), ``LOAD_RATE_HEADROOM`` (seconds a task may take on average at
the peak rate before arrivals wait; default 4), ``LOAD_PHASE_STATS`` (where the
per-phase summary is written as JSON when the test stops). Local runner only: the
feed and the recorder live in the locust process.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import gevent
from gevent.queue import Queue
from locust import events
from locust.exception import CatchResponseError

from loadtest.rate_plan import TAIL_SECONDS, PhaseRecorder, phase_at, plan, pool_size, task_rate, total_seconds


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


class ArrivalFeed:
    """Poisson task arrivals at the phase's rate, taken by free users; every request recorded per phase."""

    def __init__(self) -> None:
        self.phases = plan(_env_float("LOAD_RATE_SCALE", 1), _env_float("LOAD_DURATION_SCALE", 1))
        self.pool = pool_size(self.phases, _env_float("LOAD_RATE_HEADROOM", 4))
        self.recorder = PhaseRecorder(self.phases)
        self.queue: Queue[float] = Queue()
        self.t0: float | None = None
        self._greenlet: gevent.Greenlet | None = None

    def offset(self) -> float:
        return 0.0 if self.t0 is None else time.perf_counter() - self.t0

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = time.perf_counter()
            self._greenlet = gevent.spawn(self._offer)

    def _offer(self) -> None:
        scheduled = 0.0
        end = total_seconds(self.phases)
        by_name = {p.name: p for p in self.phases}
        while True:
            phase = by_name[phase_at(self.phases, scheduled)]
            scheduled += random.expovariate(task_rate(phase))
            if scheduled >= end:
                return
            delay = scheduled - self.offset()
            if delay > 0:
                gevent.sleep(delay)
            self.recorder.arrival_offered(scheduled)
            self.queue.put(scheduled)

    def take(self) -> float:
        """Block until the next arrival (the caller's wait time is then 0)."""
        scheduled = self.queue.get()
        self.recorder.arrival_taken(scheduled, self.offset() - scheduled)
        return 0.0

    def tick(self) -> tuple[int, float] | None:
        """The shape: the whole pool, spawned over most of the warm-up, until the last phase and its tail end."""
        self.start()
        if self.offset() > total_seconds(self.phases) + TAIL_SECONDS:
            return None
        return self.pool, max(1.0, self.pool / max(1.0, 0.8 * self.phases[0].seconds))

    def on_request(self, request_type: str, name: str, response_time: float, exception: Any = None,
                   **_kwargs: Any) -> None:
        if self.t0 is None:
            return
        started = self.offset() - (response_time or 0) / 1000
        error = None
        if exception is not None:
            error = str(exception) if isinstance(exception, CatchResponseError) else \
                f"{type(exception).__name__}: {exception}"
        self.recorder.request(started, request_type, name, float(response_time or 0), error)

    def write(self, **_kwargs: Any) -> None:
        path = os.environ.get("LOAD_PHASE_STATS")
        if not path:
            return
        summary = {"pool": self.pool, "t0_epoch": time.time() - self.offset(),
                   "phases": self.recorder.summary(), "waiting_arrivals": self.queue.qsize()}
        Path(path).write_text(json.dumps(summary, indent=1))


def install() -> ArrivalFeed:
    """The feed of this locust process, listening to every request and writing its summary at the end."""
    feed = ArrivalFeed()
    events.request.add_listener(feed.on_request)
    events.test_stop.add_listener(feed.write)
    return feed
