"""``schemathesis run --checks all`` against a real stack, as a user and as an admin.

The CLI runs every phase (examples, coverage, fuzzing, stateful through the document's
own ``links``; inferred links are off so the stateful phase follows what the document
promises) with every check, including ``positive_data_acceptance`` and
``negative_data_rejection``. The run is bounded (examples per operation, stateful steps)
so both runs take well under two minutes on a 2-core machine.

The only adjustment is ``positive_data_acceptance``, which by default wants schema-valid
input never to get a 422. :func:`refusals_of_valid_input` derives from the document
which operations legitimately refuse schema-valid input with a 422, each kind with a
one-line reason (:data:`REASONS`); 422 is added to that check's accepted statuses for
those operations only. No check is switched off.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.api.helpers import Api
from tests.support.client import ApiClient
from tests.support.invariants import assert_money_invariants
from tests.support.waiting import wait_drained

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
EXAMPLES = int(os.environ.get("PURSER_SCHEMATHESIS_EXAMPLES", "12"))  # per operation and phase
STATEFUL_EXAMPLES = int(os.environ.get("PURSER_SCHEMATHESIS_SCENARIOS", "60"))  # stateful scenarios: cheap
STATEFUL_STEPS = int(os.environ.get("PURSER_SCHEMATHESIS_STEPS", "12"))
SEED = 1

# Why a schema-valid request may still get 422, by kind (see refusals_of_valid_input).
REASONS = {
    "business": "a documented business refusal (e.g. RECEIVER_NOT_FOUND for a random well-formed user id)",
    "whole-float": "JSON Schema counts 2.0 as an integer; strict validation refuses it (stated in the schema)",
    "cursor": "a cursor is opaque: a string of the right shape that this API did not issue is refused",
    "key-reuse": "generated Idempotency-Keys repeat across cases with other bodies: IDEMPOTENCY_KEY_REUSED",
}
SHAPE_CODES = {"VALIDATION_FAILED", "IDEMPOTENCY_KEY_REUSED"}
POSITIVE_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


def _resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _has_integer(document: dict[str, Any], schema: dict[str, Any], depth: int = 0) -> bool:
    schema = _resolve(document, schema)
    if schema.get("type") == "integer":
        return True
    children = [*schema.get("properties", {}).values(), *schema.get("anyOf", []), *schema.get("allOf", [])]
    if isinstance(schema.get("items"), dict):
        children.append(schema["items"])
    return depth < 5 and any(_has_integer(document, child, depth + 1) for child in children)


def refusals_of_valid_input(document: dict[str, Any]) -> dict[str, list[str]]:
    """operationId -> the kinds (keys of REASONS) of 422 it gives to schema-valid input."""
    out: dict[str, list[str]] = {}
    for ops in document["paths"].values():
        for op in ops.values():
            kinds = []
            answer = op["responses"].get("422", {}).get("content", {}).get("application/problem+json", {})
            enum = next((part["properties"]["code"]["enum"] for part in answer.get("schema", {}).get("allOf", [])
                         if "code" in part.get("properties", {})), [])
            if set(enum) - SHAPE_CODES:
                kinds.append("business")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body is not None and _has_integer(document, body):
                kinds.append("whole-float")
            params = {p["name"]: p for p in op.get("parameters", [])}
            if "cursor" in params:
                kinds.append("cursor")
            if "Idempotency-Key" in params:
                kinds.append("key-reuse")
            if kinds:
                out[op["operationId"]] = kinds
    return out


# The admin run must not demote or freeze its own caller (schemathesis reuses ids it saw in
# answers, such as the caller's own from GET /api/me): these operations target a seeded user.
OWN_CALLER_SAFE = ("admin.set_role", "admin.freeze", "admin.unfreeze")


def config_toml(document: dict[str, Any], target_user: str | None = None) -> str:
    """The schemathesis.toml of the run: no inferred links, 422 accepted where REASONS say so."""
    lines = ["[generation]", 'database = "none"', "",
             "[phases.stateful]", f"max-steps = {STATEFUL_STEPS}", "",
             "[phases.stateful.inference]", "algorithms = []", ""]
    for operation_id in OWN_CALLER_SAFE if target_user else ():
        lines += ["# so that the admin running the tests keeps its role and an active wallet",
                  "[[operations]]", f'include-operation-id = "{operation_id}"',
                  f'parameters = {{ "path.userId" = "{target_user}" }}', ""]
    for operation_id, kinds in sorted(refusals_of_valid_input(document).items()):
        lines += [f"# {operation_id}: " + "; ".join(REASONS[k] for k in kinds),
                  "[[operations]]", f'include-operation-id = "{operation_id}"',
                  "checks.positive_data_acceptance.expected-statuses = "
                  + json.dumps([*POSITIVE_DEFAULT, "422"]), ""]
    return "\n".join(lines)


def test_positive_acceptance_exceptions_are_the_documented_ones(api):
    """The 422 exceptions come from the document: a refusal listed there, integers, cursors, keys."""
    document = api.get("/api/openapi.json").json
    kinds = refusals_of_valid_input(document)
    assert "business" in kinds["premium.unlock"] and "business" in kinds["wallet.transfer"]
    assert kinds["wallet.transactions"] == ["cursor"] and kinds["jobs.list_jobs"] == ["cursor"]
    assert kinds["subscription.put_plan"] == ["whole-float"]
    assert "auth.me" not in kinds and "premium.get_content" not in kinds and "subscription.cancel" not in kinds
    toml = config_toml(document)
    import tomllib

    parsed = tomllib.loads(toml)
    assert parsed["phases"]["stateful"]["inference"]["algorithms"] == []
    assert {op["include-operation-id"] for op in parsed["operations"]} == set(kinds)


def _run(base_url: str, token: str, config: Path, report: Path, phases: str,
         examples: int) -> subprocess.CompletedProcess[str]:
    argv = [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{base_url}/api/openapi.json",
            "--url", base_url, "--checks", "all", "--header", f"Authorization: Bearer {token}",
            "--phases", phases, "--max-examples", str(examples), "--seed", str(SEED), "--workers", "1",
            "--request-timeout", "30", "--no-shrink", "--no-color",
            "--report", "junit", "--report-junit-path", str(report)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=config.parent)


# One run per token and kind of phase: the stateful phase gets more scenarios than the
# per-operation phases get examples, as a scenario costs a few requests.
RUNS = (("examples,coverage,fuzzing", EXAMPLES), ("stateful", STATEFUL_EXAMPLES))


@pytest.mark.timeout(600)
def test_schemathesis_all_checks_as_user_and_admin(web_server, fresh_db, session_worker, tmp_path):
    server = web_server(concurrency=2)
    api = Api(ApiClient(base_url=server.base_url), fresh_db)
    # The "user" is a creator: the role that can call the most operations (content, plans).
    creator = api.user("creator")
    api.fund(creator, 1_000_000)
    api.send("PUT", "/api/subscription/plan", creator, {"price": 10, "periodDays": 30})
    content = api.send("POST", "/api/premium/content", creator, {"title": "t", "price": 10})
    assert content.status == 201, content
    other = api.user("creator")
    api.send("PUT", "/api/subscription/plan", other, {"price": 10, "periodDays": 30})
    fan = api.user("free")  # the admin run's target for role changes and freezes
    admin = api.user("admin")
    api.fund(admin, 1_000_000)
    # Something for the links from lists to follow: a subscription each, a payout.
    api.expect_settled(creator, api.money("/api/subscription/subscribe", creator, {"creatorId": other.id}))
    api.expect_settled(admin, api.money("/api/subscription/subscribe", admin, {"creatorId": creator.id}))
    api.expect_settled(creator, api.money("/api/payouts", creator, {"amount": 5_000}))
    document = requests.get(f"{server.base_url}/api/openapi.json", timeout=30).json()

    failures, links_covered = [], {}
    for who, user in (("creator", creator), ("admin", admin)):
        config = tmp_path / f"schemathesis-{who}.toml"
        config.write_text(config_toml(document, fan.id if who == "admin" else None))
        for phases, examples in RUNS:
            started = time.monotonic()
            done = _run(server.base_url, user.token, config, tmp_path / f"junit-{who}-{phases}.xml", phases,
                        examples)
            took = time.monotonic() - started
            print(f"schemathesis as {who} ({phases}): exit {done.returncode} in {took:.0f}s\n{done.stdout[-3000:]}")
            if done.returncode != 0:
                failures.append(f"--- as {who}, {phases} (exit {done.returncode}, {took:.0f}s) ---\n"
                                f"{done.stdout[-20000:]}\n{done.stderr[-3000:]}")
            covered = re.search(r"API Links:\s+(\d+) covered", done.stdout)
            if phases == "stateful":
                links_covered[who] = int(covered.group(1)) if covered else 0
    assert not failures, "\n".join(failures)
    # The stateful phase really followed links (how many depends on what the run created).
    assert all(n >= 3 for n in links_covered.values()), links_covered
    assert api.get("/api/me", admin).json["role"] == "admin"
    wait_drained(fresh_db)
    assert_money_invariants(fresh_db)
