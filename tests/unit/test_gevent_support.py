"""The gevent worker's helpers: CPU-heavy calls run in gevent's thread pool, results and errors intact."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from infra.gevent_support import NoAccessLogger, in_threadpool


def test_in_threadpool_returns_the_result_and_raises_the_error() -> None:
    callers: list[str] = []

    def work(x: int, *, y: int = 0) -> int:
        callers.append(threading.current_thread().name)
        if x < 0:
            raise ValueError("negative")
        return x + y

    offloaded = in_threadpool(work)
    assert offloaded(2, y=3) == 5
    with pytest.raises(ValueError, match="negative"):
        offloaded(-1)
    assert offloaded.__name__ == "work" and getattr(offloaded, "purser_offloaded", False)
    assert callers and all(name != threading.current_thread().name for name in callers)


def test_argon2_in_a_patched_process_verifies_off_the_hub() -> None:
    # In a child: monkey patching is for the whole process.
    code = textwrap.dedent("""
        from infra.gevent_support import patch_worker
        patch_worker()
        import gevent
        from argon2 import PasswordHasher
        from argon2.exceptions import VerifyMismatchError
        hasher = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1)
        digest = hasher.hash("secret")
        ticks = []
        def ticker():
            while True:
                ticks.append(1)
                gevent.sleep(0.001)
        g = gevent.spawn(ticker)
        assert hasher.verify(digest, "secret")
        during = len(ticks)  # the hub kept running other greenlets while argon2 ran
        try:
            hasher.verify(digest, "wrong")
            raise SystemExit("a wrong password verified")
        except VerifyMismatchError:
            pass
        g.kill()
        assert getattr(PasswordHasher.verify, "purser_offloaded", False)
        print("ok" if during >= 3 else f"hub blocked: {during} ticks")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_gunicorn_access_line_is_not_formatted() -> None:
    assert NoAccessLogger.access(object.__new__(NoAccessLogger), None, None, None, None) is None
