"""The OpenAPI document: valid, and complete for the contract (problem codes, shapes, links).

test_openapi_schemathesis.py checks it against a real server with every schemathesis check.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
import schemathesis

from tests.api.helpers import Api

MONEY = {400, 401, 413, 415, 422}  # no 409: the job is the key claim (decision 130)
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
    ("post", "/api/payments/webhook"): (202, "WebhookIn", "JobOut", {400, 401, 413, 415, 422}),
    ("post", "/api/admin/credit"): (202, "CreditIn", "JobOut", MONEY | {403}),
    ("post", "/api/admin/refunds"): (202, "RefundIn", "JobOut", MONEY | {403, 404}),
    ("post", "/api/admin/wallets/{userId}/freeze"): (200, None, "WalletStatusOut", {401, 403, 404}),
    ("post", "/api/admin/wallets/{userId}/unfreeze"): (200, None, "WalletStatusOut", {401, 403, 404}),
    ("get", "/api/jobs/{jobId}"): (200, None, "JobOut", {401, 404}),
    ("get", "/api/jobs"): (200, None, "JobPage", {401, 422}),
    ("post", "/api/payouts"): (202, "PayoutIn", "JobOut", MONEY | {403}),
    ("get", "/api/payouts"): (200, None, "PayoutPage", {401, 422}),
    ("get", "/api/payouts/{payoutId}"): (200, None, "PayoutOut", {401, 404}),
    ("post", "/api/payments/events"): (202, "ProviderEventIn", "JobOut", {400, 401, 404, 413, 415, 422}),
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


def _problem_codes(answer: dict[str, Any]) -> list[str] | None:
    """The ``code`` enum of a problem answer (None: codes not constrained); the schema is Problem."""
    schema = answer["content"]["application/problem+json"]["schema"]
    if "$ref" in schema:
        assert schema["$ref"] == "#/components/schemas/Problem"
        return None
    base, narrowed = schema["allOf"]
    assert base == {"$ref": "#/components/schemas/Problem"}
    return narrowed["properties"]["code"]["enum"]


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
                codes = _problem_codes(answer)
                assert codes, f"{where} {code}: the problem codes are not listed"
                examples = answer["content"]["application/problem+json"]["examples"]
                assert set(examples) == set(codes), (where, code)
                assert all(e["value"]["code"] == name and e["value"]["status"] == int(code)
                           for name, e in examples.items()), (where, code)
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
    assert amount["type"] == "integer" and amount["minimum"] == 1 and amount["maximum"] >= 1
    assert "`1.0`" in amount["description"] and "refused" in amount["description"]


# Refusals a client must be able to branch on: (method, path) -> status -> codes the answer lists.
REFUSALS: dict[tuple[str, str], dict[int, set[str]]] = {
    ("post", "/api/wallet/transfer"): {422: {"RECEIVER_NOT_FOUND", "SELF_TRANSFER", "VALIDATION_FAILED",
                                             "IDEMPOTENCY_KEY_REUSED"},
                                       400: {"IDEMPOTENCY_KEY_REQUIRED", "IDEMPOTENCY_KEY_INVALID", "MALFORMED_JSON"}},
    ("post", "/api/gifts"): {422: {"RECEIVER_NOT_FOUND", "SELF_TRANSFER"}},
    ("post", "/api/premium/unlock"): {422: {"CONTENT_NOT_FOUND", "OWN_CONTENT"}},
    ("post", "/api/subscription/subscribe"): {422: {"RECEIVER_NOT_FOUND", "SELF_TRANSFER", "NO_PLAN"}},
    ("post", "/api/subscription/cancel"): {404: {"SUBSCRIPTION_NOT_FOUND"}},
    ("post", "/api/payouts"): {403: {"PAYOUT_NOT_ALLOWED"}, 422: {"PAYOUT_BELOW_MINIMUM"}},
    ("post", "/api/admin/refunds"): {404: {"ORIGINAL_NOT_FOUND"}, 422: {"NOT_REFUNDABLE"}, 403: {"FORBIDDEN"}},
    ("post", "/api/auth/register"): {409: {"EMAIL_TAKEN"}},
    ("post", "/api/auth/login"): {401: {"INVALID_CREDENTIALS"}},
    ("get", "/api/jobs/{jobId}"): {404: {"JOB_NOT_FOUND"}, 401: {"UNAUTHORIZED"}},
    ("get", "/api/premium/content/{contentId}"): {404: {"CONTENT_NOT_FOUND"}},
    ("post", "/api/payments/webhook"): {401: {"INVALID_SIGNATURE"}, 422: {"RECEIVER_NOT_FOUND"}},
    ("get", "/api/jobs"): {422: {"VALIDATION_FAILED"}},
}


def test_business_refusals_are_listed_per_answer(document):
    paths = document["paths"]
    for (method, path), statuses in REFUSALS.items():
        responses = paths[path][method]["responses"]
        for status, codes in statuses.items():
            listed = _problem_codes(responses[str(status)]) or []
            assert codes <= set(listed), f"{method.upper()} {path} {status}: {sorted(codes - set(listed))} missing"
            assert all(code in responses[str(status)]["description"] for code in codes)
    # A failed job is a 200 with error.code: those codes are in JobOut.
    job_error = document["components"]["schemas"]["JobError"]["properties"]["code"]
    assert {"INSUFFICIENT_FUNDS", "WALLET_FROZEN", "ALREADY_UNLOCKED", "REFUND_EXCEEDS_ORIGINAL"} <= set(
        job_error["enum"])
    assert "INSUFFICIENT_FUNDS" in job_error["description"]


def test_cursors_and_query_parameters_are_declared(document):
    for path in ("/api/jobs", "/api/wallet/transactions", "/api/payouts"):
        params = {p["name"]: p for p in document["paths"][path]["get"]["parameters"]}
        cursor = params["cursor"]
        assert cursor["in"] == "query" and cursor["required"] is False
        assert cursor["schema"]["type"] == "string" and cursor["schema"]["maxLength"] == 54
        assert cursor["schema"]["pattern"] == "^[A-Za-z0-9_-]{35,54}$" and "Opaque" in cursor["description"]
        assert params["limit"]["schema"] == {**params["limit"]["schema"], "type": "integer", "minimum": 1,
                                             "maximum": 100}
        assert "422" in document["paths"][path]["get"]["responses"]


def test_issued_cursors_match_the_documented_pattern():
    import re
    from datetime import UTC, datetime

    from api.request_schemas import CURSOR_PATTERN
    from services.queries import decode_cursor, encode_cursor

    for moment in (datetime.fromtimestamp(0.001, UTC), datetime(2026, 1, 1, tzinfo=UTC),
                   datetime(9999, 12, 31, tzinfo=UTC)):
        cursor = encode_cursor(moment, "0123456789abcdef01234567")
        assert re.fullmatch(CURSOR_PATTERN, cursor), cursor
        assert decode_cursor(cursor)[1] == "0123456789abcdef01234567"


def _links(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    op = document["paths"][path][method]
    ok = next(answer for status, answer in op["responses"].items() if int(status) < 300)
    return ok.get("links", {})


def test_links_a_client_and_schemathesis_follow(document):
    operation_ids = {op["operationId"] for ops in document["paths"].values() for op in ops.values()}
    for (method, path), (status, _request, response, _errors) in CONTRACT.items():
        if status == 202 and response == "JobOut":
            link = _links(document, method, path)["GetJob"]
            assert link == {**link, "operationId": "jobs.get_job", "parameters": {"jobId": "$response.body#/jobId"}}
    content = _links(document, "post", "/api/premium/content")
    assert content["GetContent"]["parameters"] == {"contentId": "$response.body#/contentId"}
    assert content["Unlock"]["requestBody"] == {"contentId": "$response.body#/contentId"}
    cancel = _links(document, "get", "/api/subscription")["Cancel"]
    assert cancel["operationId"] == "subscription.cancel"
    assert cancel["requestBody"] == {"subscriptionId": "$response.body#/items/0/subscriptionId"}
    login = _links(document, "post", "/api/auth/register")["Login"]
    assert login["requestBody"] == {"email": "$request.body#/email", "password": "$request.body#/password"}
    assert _links(document, "get", "/api/payouts")["GetPayout"]["operationId"] == "payouts.get_payout"
    for ops in document["paths"].values():
        for op in ops.values():
            for answer in op["responses"].values():
                for link in answer.get("links", {}).values():
                    assert link["operationId"] in operation_ids, link


def test_docs_page_lists_the_endpoints(api, document):
    r = api.get("/api/docs")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
    page = r.body.decode()
    assert "/api/openapi.json" in page
    for _method, path in CONTRACT:
        flask_path = path.replace("{", "&lt;").replace("}", "&gt;")
        assert flask_path in page, path
