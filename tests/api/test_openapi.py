"""The OpenAPI document: valid, complete for the contract, and true of a real server (schemathesis)."""

from __future__ import annotations

import time
from typing import Any

import jsonschema_rs
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.helpers import Api
from tests.support.client import ApiClient
from tests.support.invariants import assert_money_invariants
from tests.support.waiting import wait_drained as wait_until_drained

MONEY = {400, 401, 409, 413, 415, 422}
# (method, path) -> (success status, request schema, response schema, error statuses that must be documented)
CONTRACT: dict[tuple[str, str], tuple[int, str | None, str, set[int]]] = {
    ("post", "/api/auth/register"): (201, "RegisterIn", "UserOut", {400, 409, 413, 415, 422}),
    ("post", "/api/auth/login"): (200, "LoginIn", "TokenOut", {400, 401, 413, 415, 422}),
    ("get", "/api/me"): (200, None, "MeOut", {401}),
    ("patch", "/api/admin/users/{userId}"): (200, "RoleIn", "UserOut", {401, 403, 404, 422}),
    ("get", "/api/wallet/balance"): (200, None, "BalanceOut", {401}),
    ("get", "/api/wallet/transactions"): (200, None, "TxPage", {401, 422}),
    ("post", "/api/wallet/transfer"): (202, "TransferIn", "JobOut", MONEY),
    ("post", "/api/premium/content"): (201, "ContentIn", "ContentOut", {401, 403, 422}),
    ("get", "/api/premium/content/{contentId}"): (200, None, "ContentOut", {401, 404}),
    ("post", "/api/premium/unlock"): (202, "UnlockIn", "JobOut", MONEY),
    ("put", "/api/subscription/plan"): (200, "PlanIn", "PlanOut", {401, 403, 422}),
    ("post", "/api/subscription/subscribe"): (202, "SubscribeIn", "JobOut", MONEY),
    ("post", "/api/subscription/cancel"): (200, "CancelIn", "SubscriptionOut", {401, 404, 422}),
    ("get", "/api/subscription"): (200, None, "SubscriptionPage", {401}),
    ("post", "/api/gifts"): (202, "GiftIn", "JobOut", MONEY),
    ("post", "/api/payments/webhook"): (202, "WebhookIn", "JobOut", {400, 401, 409, 413, 415, 422}),
    ("post", "/api/admin/credit"): (202, "CreditIn", "JobOut", MONEY | {403}),
    ("post", "/api/admin/refunds"): (202, "RefundIn", "JobOut", MONEY | {403, 404}),
    ("post", "/api/admin/wallets/{userId}/freeze"): (200, None, "WalletStatusOut", {401, 403, 404}),
    ("post", "/api/admin/wallets/{userId}/unfreeze"): (200, None, "WalletStatusOut", {401, 403, 404}),
    ("get", "/api/jobs/{jobId}"): (200, None, "JobOut", {401, 404}),
    ("get", "/api/jobs"): (200, None, "JobPage", {401, 422}),
    ("post", "/api/payouts"): (202, "PayoutIn", "JobOut", MONEY | {403}),
    ("get", "/api/payouts"): (200, None, "PayoutPage", {401, 422}),
    ("get", "/api/payouts/{payoutId}"): (200, None, "PayoutOut", {401, 404}),
    ("post", "/api/payments/events"): (202, "ProviderEventIn", "JobOut", {400, 401, 404, 409, 413, 415, 422}),
}
PROVIDER = {("post", "/api/payments/webhook"), ("post", "/api/payments/events")}  # signed, keyed by their own ids
PUBLIC = {("post", "/api/auth/register"), ("post", "/api/auth/login"), *PROVIDER}
IDEMPOTENT = {key for key, (status, *_rest) in CONTRACT.items() if status == 202 and key not in PROVIDER}


@pytest.fixture
def document(api: Api) -> dict[str, Any]:
    r = api.get("/api/openapi.json")
    assert r.status == 200 and r.headers["Content-Type"].startswith("application/json"), r
    return r.json


def test_document_is_valid_openapi(document):
    assert document["openapi"].startswith("3.1")
    try:
        from openapi_spec_validator import validate  # type: ignore[import-not-found]
    except ImportError:  # not a dependency: the OpenAPI 3.1 meta-schema schemathesis ships is used instead
        validate = None
    if validate is not None:
        validate(document)
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # the OpenAPI 3.1 meta-schema, via jsonschema_rs; raises on any violation
    for name, component in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(component), name
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(ops) for ops in document["paths"].values())
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


def _ref(media: dict[str, Any]) -> str:
    return media["schema"]["$ref"].rsplit("/", 1)[1]


def test_document_covers_every_endpoint_of_the_contract(document):
    paths, schemas = document["paths"], document["components"]["schemas"]
    problem = schemas["Problem"]
    assert set(problem["required"]) >= {"type", "title", "status", "detail", "code", "requestId"}
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    for (method, path), (status, request, response, errors) in CONTRACT.items():
        where = f"{method.upper()} {path}"
        assert method in paths.get(path, {}), f"{where} is not documented"
        op = paths[path][method]
        responses = op["responses"]
        assert _ref(responses[str(status)]["content"]["application/json"]) == response, where
        assert response in schemas
        if request is None:
            assert "requestBody" not in op, where
        else:
            assert op["requestBody"]["required"] is True
            assert _ref(op["requestBody"]["content"]["application/json"]) == request, where
            assert schemas[request].get("additionalProperties") is False, f"{request} must refuse unknown fields"
        missing = {str(code) for code in errors} - set(responses)
        assert not missing, f"{where} does not document {sorted(missing)}"
        for code, answer in responses.items():
            if int(code) >= 400:
                assert _ref(answer["content"]["application/problem+json"]) == "Problem", (where, code)
        params = {p["name"]: p for p in op.get("parameters", [])}
        for name in path.split("{")[1:]:
            param = params[name.split("}")[0]]
            assert param["in"] == "path" and param["schema"]["pattern"] == "^[0-9a-f]{24}$", where
        if (method, path) in PUBLIC:
            assert "security" not in op, where
        else:
            assert op["security"] == [{"bearerAuth": []}], where
        if (method, path) in IDEMPOTENT:
            key = params["Idempotency-Key"]
            assert key["in"] == "header" and key["required"] is True and key["schema"]["maxLength"] == 255, where
        if status == 202:
            assert "Location" in responses["202"]["headers"], where
    for provider_path in ("/api/payments/webhook", "/api/payments/events"):
        assert paths[provider_path]["post"]["parameters"][0]["name"] == "X-Purser-Signature"
    assert "Prefer" in {p["name"] for p in paths["/api/jobs/{jobId}"]["get"]["parameters"]}
    limits = {p["name"]: p["schema"] for p in paths["/api/jobs"]["get"]["parameters"]}
    assert limits["limit"]["maximum"] == 100 and set(limits) == {"limit", "cursor", "status"}
    assert {"TransferIn", "WebhookIn", "CreditIn", "GiftIn"} <= set(schemas)
    amount = schemas["TransferIn"]["properties"]["amount"]
    assert amount["type"] == "integer" and amount["exclusiveMinimum"] == 0 and amount["maximum"] >= 1


def test_docs_page_lists_the_endpoints(api, document):
    r = api.get("/api/docs")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    page = r.body.decode()
    assert "/api/openapi.json" in page
    for _method, path in CONTRACT:
        flask_path = path.replace("{", "&lt;").replace("}", "&gt;")
        assert flask_path in page, path


# --- schemathesis against a real gunicorn ------------------------------------------------

CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
EXAMPLES = {"positive": 20, "negative": 15}


def _run_operation(operation: Any, mode: schemathesis.GenerationMode, examples: int, base_url: str,
                   session: requests.Session, headers: dict[str, str]) -> str | None:
    """Run ``examples`` generated cases of one operation; return the first failure, if any."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
        return None  # nothing to negate: the operation takes no parameters and no body
    except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - schemathesis raises a BaseExceptionGroup
        return f"{operation.label} [{mode.value}]: {type(exc).__name__}: {str(exc)[:1500]}"
    return None


def test_schemathesis_against_real_server(web_server, fresh_db, session_worker):
    """No 5xx, and every answer (status, content type, body) is what the document says."""
    server = web_server(concurrency=2)
    api = Api(ApiClient(base_url=server.base_url), fresh_db)
    creator = api.user("creator")  # a logged-in user that may publish content and plans
    api.fund(creator, 10_000)
    api.send("PUT", "/api/subscription/plan", creator, {"price": 10, "periodDays": 30})
    api.send("POST", "/api/premium/content", creator, {"title": "t", "price": 10})

    schema = schemathesis.openapi.from_url(f"{server.base_url}/api/openapi.json", timeout=30)
    headers = {"Authorization": f"Bearer {creator.token}"}
    failures, started, ran = [], time.monotonic(), 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
                failure = _run_operation(operation, mode, EXAMPLES[mode.value], server.base_url, session, headers)
                ran += 1
                if failure:
                    failures.append(failure)
    assert ran >= 2 * len(CONTRACT)
    assert not failures, f"{len(failures)} failing operation(s) in {time.monotonic() - started:.0f}s:\n" + \
        "\n\n".join(failures)
    wait_until_drained(fresh_db)
    assert_money_invariants(fresh_db)
