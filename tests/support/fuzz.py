"""A schemathesis fuzz run against a live server: N generated requests, zero 5xx.

:func:`run_fuzz` is the whole scenario (a stack, funded users per role, the money
invariants afterwards); the security suite runs it at CI size, the chaos suite's
long variant as every role.

Cases come from the server's own ``/api/openapi.json``, every operation in turn,
in both positive (schema-valid) and negative (schema-violating) generation modes,
with a logged-in user's token. Every request is sent; the hard rule is that no
answer is a 5xx. The other schemathesis checks (status codes, content types and
bodies as documented) are collected as a conformance report.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.client import ApiClient
from tests.support.invariants import assert_money_invariants
from tests.support.load import Tally, fund
from tests.support.seeding import seed_users
from tests.support.waiting import wait_drained

# The documented-contract checks. ``positive_data_acceptance`` is left out on purpose:
# a schema-valid transfer to a random (non-existent) user id is *meant* to get 422.
CONFORMANCE = [status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance, negative_data_rejection]


@dataclass
class FuzzReport:
    sent: int = 0
    unsendable: int = 0  # cases the HTTP client itself refused (e.g. non-latin-1 header values)
    statuses: Counter = field(default_factory=Counter)
    per_operation: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # curl reproductions
    conformance: Counter = field(default_factory=Counter)  # check failure title -> count
    conformance_examples: dict[str, str] = field(default_factory=dict)
    not_generated: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "unsendable": self.unsendable, "statuses": dict(sorted(self.statuses.items())),
                "operations": len(self.per_operation), "server_errors": len(self.server_errors),
                "conformance_failures": dict(self.conformance), "not_generated": dict(self.not_generated),
                "per_operation": dict(sorted(self.per_operation.items()))}


# Headers that frame the HTTP message itself: the client library sets them, not the caller.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})


def fuzz(base_url: str, token: str, total: int, *, seed: int = 1) -> FuzzReport:
    """Send at least ``total`` generated requests to ``base_url``, spread over every operation."""
    schema = schemathesis.openapi.from_url(base_url + "/api/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # At least two rounds over every operation and mode, so no operation is starved.
    per_batch = max(2, -(-total // (len(operations) * 2 * 2)))
    report = FuzzReport()
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}

    def send(case: Any) -> None:
        if FRAMING_HEADERS & {name.lower() for name in (case.headers or {})}:
            # A generated Content-Length or Transfer-Encoding re-frames the message: the HTTP
            # server refuses it (400) before the app sees it, as RFC 9112 requires.
            report.unsendable += 1
            return
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=60)
        except (UnicodeError, ValueError, requests.exceptions.InvalidHeader):
            report.unsendable += 1
            return
        report.sent += 1
        report.statuses[response.status_code] += 1
        report.per_operation[case.operation.label] += 1
        if response.status_code >= 500:
            report.server_errors.append(f"{response.status_code}: {case.as_curl_command(headers=headers)}")
            return
        try:
            case.validate_response(response, checks=CONFORMANCE, headers=headers)
        except (AssertionError, FailureGroup) as exc:  # collected and reported, not fatal here
            failures = exc.exceptions if isinstance(exc, FailureGroup) else (exc,)
            for failure in failures:
                title = getattr(failure, "title", None) or type(failure).__name__
                key = f"{case.operation.label} [{response.status_code}]: {title}"
                report.conformance[key] += 1
                report.conformance_examples.setdefault(key, case.as_curl_command(headers=headers)[:600])

    rounds = itertools.count()
    while report.sent < total:
        round_no = next(rounds)
        if round_no > 50:
            break
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if report.sent >= total:
                    return report
                strategy = operation.as_strategy(generation_mode=mode)

                @settings(max_examples=per_batch, database=None, deadline=None, phases=[Phase.generate],
                          suppress_health_check=list(HealthCheck), derandomize=False)
                @given(case=strategy)
                def run(case: Any) -> None:
                    send(case)

                run._hypothesis_internal_use_seed = seed * 100_003 + round_no * 1_009 + len(report.per_operation)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        run()
                    except Exception as exc:  # noqa: BLE001 - generation trouble for one operation
                        # e.g. Unsatisfiable: no way to make a schema-violating request to an
                        # operation without parameters or body. Nothing was sent.
                        report.not_generated[f"{operation.label} ({mode.value}): {type(exc).__name__}"] += 1
    return report


def run_fuzz(web_server: Any, celery_worker_proc: Any, db: Any, total: int, seed: int,
             roles: tuple[str, ...] = ("creator",)) -> dict[str, FuzzReport]:
    """``total`` requests per role against a fresh stack; every role's run must get zero 5xx.

    ``web_server`` and ``celery_worker_proc`` are the fixtures' factories.
    """
    web = web_server(concurrency=2, extra_env={"WEB_THREADS": "4", "RATE_LIMIT_ENABLED": "false",
                                               "LOG_LEVEL": "WARNING"})
    celery_worker_proc()
    http = ApiClient(web.base_url)
    users = {role: seed_users(db, 1, role, f"fuzz-{role}")[0] for role in roles}
    fund(http, Tally(), list(users.values()), 10_000)
    reports = {}
    for n, (role, user) in enumerate(users.items()):
        report = reports[role] = fuzz(web.base_url, user.token, total, seed=seed + n)
        print(role, json.dumps(report.as_dict(), indent=1))
        for key, example in list(report.conformance_examples.items())[:10]:
            print(f"conformance: {key}\n  {example}")
        assert not report.server_errors, f"5xx answers as {role}:\n" + "\n".join(report.server_errors[:10])
        assert report.sent >= total, report.as_dict()
    wait_drained(db, timeout=180)
    assert_money_invariants(db)
    return reports
