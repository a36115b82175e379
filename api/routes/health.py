"""Liveness and readiness.

Readiness tells anyone whether this instance can serve: check names and booleans.
Timings, worker names and error text are for callers whose *stored* role is admin
(an exception message can carry host names, store addresses or library versions).
Every check is bounded: a ping each to MongoDB and Redis, and one ``ZCOUNT`` over
the ledger workers' heartbeats (``infra/queues.py``), never a keyspace scan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, g, jsonify

from api.response_schemas import HealthOut
from api.spec import endpoint
from infra import queues
from infra.redis_client import get_redis
from services import store

bp = Blueprint("health", __name__, url_prefix="/api")


@endpoint(bp, "GET", "/health", summary="Liveness: the process answers; touches no dependency",
          response=HealthOut, auth_required=False, limited=False)
def health() -> Any:
    from api import VERSION
    return jsonify(status="ok", version=VERSION)


def _timed(check: Callable[[], str]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = check()
        ok = True
    except Exception as exc:  # noqa: BLE001 - any failure makes the check fail
        ok, detail = False, f"{type(exc).__name__}: {exc}"[:200]
    return {"ok": ok, "ms": round((time.perf_counter() - started) * 1000, 2), "detail": detail}


def _mongo() -> str:
    return store.ping()


def _redis() -> str:
    get_redis().ping()
    return "ping ok"


def _worker_check(detailed: bool) -> Callable[[], str]:
    def check() -> str:
        live = queues.live_workers(get_redis(), names=queues.HEARTBEAT_NAMES_SHOWN if detailed else 0)
        if not detailed:
            if live.ledger < 1:
                raise RuntimeError("no live worker consumes the ledger queues")
            return ""
        names = ", ".join(live.ledger_names + live.other_names)
        if live.ledger < 1:
            raise RuntimeError(f"no live worker consumes the ledger queues (live: {names or 'none'})")
        return f"{live.ledger + (live.other or 0)} worker(s), {live.ledger} settling: {names}"
    return check


def _caller_is_admin() -> bool:
    principal = getattr(g, "principal", None)  # carries the stored role (api/__init__.py)
    return principal is not None and principal.is_admin


@endpoint(bp, "GET", "/health/ready", summary="Readiness: MongoDB, Redis and a live worker",
          auth_required=False, limited=False, errors={503: "NOT_READY"})
def ready() -> Any:
    detailed = _caller_is_admin()
    checks = {"mongodb": _timed(_mongo), "redis": _timed(_redis)}
    checks["worker"] = _timed(_worker_check(detailed)) if checks["redis"]["ok"] else {
        "ok": False, "ms": 0, "detail": "redis unavailable"}
    if not detailed:
        checks = {name: {"ok": c["ok"]} for name, c in checks.items()}
    failing = [name for name, c in checks.items() if not c["ok"]]
    if failing:
        from api.errors import problem
        return problem(503, "NOT_READY", f"failing check(s): {', '.join(failing)}", extra={"checks": checks})
    return jsonify(status="ready", checks=checks)
