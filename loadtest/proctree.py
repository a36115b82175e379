"""The benches' one process-tree walker: a managed process and all its descendants, with psutil.

Both benches measure the stack's process groups (web, worker, mongodb, redis) as
whole trees: gunicorn's and Celery's work happens in children of the process the
stack started. :func:`tree` lists a tree, :func:`usage` sums its CPU seconds and
resident memory, :func:`group_usage` does so per group. Processes that are gone,
or exit while they are read, count as nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psutil

from devstack.supervisor import ManagedProcess


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user + system) used so far and resident memory (bytes) now."""

    cpu_seconds: float = 0.0
    rss: int = 0


def tree(managed: ManagedProcess, *, root: bool = True) -> list[psutil.Process]:
    """The running process ``managed`` started (unless ``root=False``) and all its descendants."""
    if managed.pid is None or not managed.alive:
        return []
    try:
        top = psutil.Process(managed.pid)
        return [top, *top.children(recursive=True)] if root else top.children(recursive=True)
    except psutil.Error:
        return []


def usage(processes: Iterable[ManagedProcess]) -> Usage:
    """CPU and RSS of the processes and all their descendants, summed."""
    cpu, rss = 0.0, 0
    for managed in processes:
        for proc in tree(managed):
            with contextlib.suppress(psutil.Error):
                with proc.oneshot():
                    times = proc.cpu_times()
                    cpu += times.user + times.system
                    rss += proc.memory_info().rss
    return Usage(cpu, rss)


def group_usage(groups: Mapping[str, Iterable[ManagedProcess]]) -> dict[str, Usage]:
    """:func:`usage` per named group (``Stack.process_groups()``)."""
    return {name: usage(processes) for name, processes in groups.items()}


def own_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process (the bench's client side)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system
