"""schemathesis against a real gunicorn and worker, as a logged-in creator: zero 5xx.

The 1,000-request run takes well under the 90 s budget (about 25 s here), so CI
runs it (``FUZZ_REQUESTS`` overrides the count); ``make test-all`` adds a longer run
as fan, creator and admin (tests/chaos/test_chaos_fuzz.py) with the same runner
(tests/support/fuzz.py).
"""

from __future__ import annotations

import os

import pytest

from tests.support.fuzz import run_fuzz

pytestmark = pytest.mark.slow

CI_REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "1000"))


def test_schemathesis_fuzz_finds_no_server_error(web_server, celery_worker_proc, fresh_db):
    reports = run_fuzz(web_server, celery_worker_proc, fresh_db, CI_REQUESTS, seed=1)
    # The contract checks (documented status codes, content types, bodies) hold too.
    assert not reports["creator"].conformance, dict(reports["creator"].conformance)
