"""The deliberate-failure route and the test-only tasks exist outside production only."""

from __future__ import annotations

import dataclasses

from flask import Flask

from infra.config import get_settings


def _app(app_env: str) -> Flask:
    from api import create_app

    return create_app(dataclasses.replace(get_settings(), app_env=app_env, rate_limit_enabled=False))


def test_test_error_route_raises_outside_production_and_is_absent_in_production() -> None:
    r = _app("test").test_client().get("/api/test/error", headers={"X-Request-ID": "obs-debug-route-1"})
    assert r.status_code == 500 and r.get_json()["code"] == "INTERNAL_ERROR"
    assert r.get_json()["requestId"] == "obs-debug-route-1"
    assert _app("production").test_client().get("/api/test/error").status_code == 404


def test_debug_task_is_only_loaded_outside_production(stack_env: dict[str, str]) -> None:
    # stack_env first: importing workers.celery_app creates the process's Celery app on
    # the broker of that moment, and later tests in this process ring through it.
    from workers.celery_app import create_celery

    for app_env in ("test", "development"):
        include = create_celery(dataclasses.replace(get_settings(), app_env=app_env)).conf.include
        assert "tasks.debug" in include and "tasks.bench" in include
    include = create_celery(dataclasses.replace(get_settings(), app_env="production")).conf.include
    assert "tasks.debug" not in include and "tasks.bench" not in include
    assert "tasks.settle" in include


def test_metrics_and_debug_routes_are_not_in_the_openapi_document() -> None:
    paths = _app("test").test_client().get("/api/openapi.json").get_json()["paths"]
    assert "/metrics" not in paths and not any(path.startswith("/api/test") for path in paths)
