"""The web tier's gevent worker: patching early and keeping CPU-heavy C calls off the hub.

Gunicorn's gevent worker (``WEB_WORKER_CLASS=gevent``, the default; see
``gunicorn.conf.py``) serves every request of a process on one OS thread, as
greenlets. I/O (pymongo, redis-py, sockets, ``time.sleep``, ``threading``) yields
once :func:`patch_worker` has monkey-patched the standard library, which it does
in gunicorn's ``post_fork`` hook, before anything in the worker imports pymongo
or creates a lock (gunicorn patches again later; the second call is a no-op).

Pure CPU work does not yield. Argon2 password hashing is the one long CPU call in
a request (tens to hundreds of ms): on the hub it would stall every other request
of the process for its whole duration. argon2-cffi releases the GIL, so
:func:`offload_argon2` runs ``PasswordHasher.hash`` and ``verify`` in gevent's
native thread pool (at most ``gevent.get_hub().threadpool.maxsize`` at once,
10 by default): the hub keeps serving while a login hashes, and two logins use
two cores as they did under the threaded worker.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def patch_worker() -> None:
    """Monkey-patch the standard library for gevent and offload argon2 (gevent workers only)."""
    from gevent import monkey

    monkey.patch_all()
    offload_argon2()


def in_threadpool(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` run in gevent's native thread pool; its result or exception is the caller's."""
    import gevent

    @functools.wraps(function)
    def offloaded(*args: Any, **kwargs: Any) -> Any:
        return gevent.get_hub().threadpool.apply(function, args, kwargs)

    offloaded.purser_offloaded = True  # type: ignore[attr-defined]
    return offloaded


def offload_argon2() -> None:
    from argon2 import PasswordHasher

    for name in ("hash", "verify"):
        method = getattr(PasswordHasher, name)
        if not getattr(method, "purser_offloaded", False):
            setattr(PasswordHasher, name, in_threadpool(method))


try:
    from gunicorn.glogging import Logger as _GunicornLogger
except ImportError:  # gunicorn is not a dependency of every process that imports this module
    _GunicornLogger = object  # type: ignore[assignment,misc]


class NoAccessLogger(_GunicornLogger):  # type: ignore[misc,valid-type]
    """Gunicorn's logger without its access line: the app writes its own (``api/__init__.py``)."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return None
