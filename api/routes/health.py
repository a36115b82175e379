"""Liveness and readiness."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, jsonify

from api.schemas import HealthOut
from api.spec import endpoint
from infra.mongo import get_client
from infra.queues import WORKER_HEARTBEAT_PREFIX, consumes_ledger
from infra.redis_client import get_redis

bp = Blueprint("health", __name__, url_prefix="/api")


@endpoint(bp, "GET", "/health", summary="Liveness: the process answers; touches no dependency",
          response=HealthOut, auth_required=False, limited=False)
def health() -> Any:
    from api import VERSION
    return jsonify(status="ok", version=VERSION)


def _timed(check: Any) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = check()
        ok = True
    except Exception as exc:  # noqa: BLE001 - any failure makes the check fail
        ok, detail = False, f"{type(exc).__name__}: {exc}"[:200]
    return {"ok": ok, "ms": round((time.perf_counter() - started) * 1000, 2), "detail": detail}


def _mongo() -> str:
    get_client().admin.command("ping")
    return "ping ok"


def _redis() -> str:
    get_redis().ping()
    return "ping ok"


def _worker() -> str:
    redis = get_redis()
    keys = list(redis.scan_iter(match=WORKER_HEARTBEAT_PREFIX + "*", count=100))
    if not keys:
        raise RuntimeError("no live Celery worker heartbeat")
    # A key that expired between the scan and the read comes back None: not a live worker.
    beats = {k.decode()[len(WORKER_HEARTBEAT_PREFIX):]: (v or b"").decode()
             for k, v in zip(keys, redis.mget(keys), strict=True)}
    settlers = sorted(name for name, queues in beats.items() if consumes_ledger(queues))
    if not settlers:
        raise RuntimeError(f"no live worker consumes the ledger queues (live: {', '.join(sorted(beats)[:5])})")
    return f"{len(beats)} worker(s), {len(settlers)} settling: {', '.join(sorted(beats)[:5])}"


@endpoint(bp, "GET", "/health/ready", summary="Readiness: MongoDB, Redis and a live worker",
          auth_required=False, limited=False, errors=(503,))
def ready() -> Any:
    checks = {"mongodb": _timed(_mongo), "redis": _timed(_redis)}
    checks["worker"] = _timed(_worker) if checks["redis"]["ok"] else {
        "ok": False, "ms": 0, "detail": "redis unavailable"}
    failing = [name for name, c in checks.items() if not c["ok"]]
    if failing:
        from api.errors import problem
        return problem(503, "NOT_READY", f"failing check(s): {', '.join(failing)}", extra={"checks": checks})
    return jsonify(status="ready", checks=checks)
