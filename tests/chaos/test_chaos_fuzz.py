"""The long schemathesis run (``make chaos``): 1,500 generated requests each as a fan,
a creator and an admin (admins reach credits, freezes and role changes for real),
zero 5xx, and the money invariants afterwards. CI runs the 1,000-request creator run
in tests/security/test_security_fuzz.py."""

from __future__ import annotations

import pytest

from tests.support.fuzz import run_fuzz

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def test_long_fuzz_as_every_role(web_server, celery_worker_proc, fresh_db, chaos_scale):
    if chaos_scale.name != "full":
        pytest.skip("the long fuzz runs under `make chaos` (CHAOS_SCALE=full); CI runs 1,000 requests")
    reports = run_fuzz(web_server, celery_worker_proc, fresh_db, 1500, seed=7, roles=("free", "creator", "admin"))
    assert sum(r.sent for r in reports.values()) >= 4500
