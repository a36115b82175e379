"""Job status, with an optional bounded wait (``Prefer: wait=N``, see ``api/waits.py``).

A settled unlock, gift, subscription charge, transfer or top-up also lists what was
given back (``refunds``, ``refunded``; ``services/refunds.py``, on the refund_of index).
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, request

from api import waits
from api.auth import current, still_admin
from api.errors import ApiError
from api.jsonbody import parse_query
from api.request_schemas import JobsQuery
from api.response_schemas import JobOut, JobPage
from api.routes.common import bad_cursor
from api.spec import Link, endpoint
from ledger.money import is_user_id
from services.job_views import job_detail
from services.jobs import get_job as load_job
from services.jobs import job_view
from services.queries import BadCursor, user_jobs
from services.store import process_db

bp = Blueprint("jobs", __name__, url_prefix="/api/jobs")

MAX_WAIT_SECONDS = 10
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait=(\d{1,3})(?:$|[;,\s])")


def _visible_job(job_id: str) -> dict[str, Any]:
    principal = current()
    job = load_job(process_db(), job_id) if is_user_id(job_id) else None
    # 404, not 403, for other people's jobs: existence is not disclosed.
    if job is None or (job.get("ownerId") != principal.user_id and not still_admin(principal)):
        raise ApiError(404, "JOB_NOT_FOUND", "No such job.")
    return job


@endpoint(bp, "GET", "/<jobId>", summary="A job's status; 'Prefer: wait=N' (N<=10) holds until terminal",
          response=JobOut, errors={404: "JOB_NOT_FOUND"}, extra_headers={"Prefer": "wait=N"})
def get_job(jobId: str) -> Any:  # noqa: N803
    match = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
    if not match:
        return jsonify(job_detail(process_db(), _visible_job(jobId))), 200, {}
    wait = min(int(match.group(1)), MAX_WAIT_SECONDS)
    headers = {"Preference-Applied": f"wait={wait}"}
    if wait == 0 or not is_user_id(jobId):
        return jsonify(job_detail(process_db(), _visible_job(jobId))), 200, headers
    # No thread and no polling while waiting: the settler announces terminal jobs
    # (api/waits.py); MongoDB is read once now and once when woken or at the deadline.
    result = waits.wait_for_job(jobId, current().user_id, wait, lambda: _visible_job(jobId),
                                lambda: load_job(process_db(), jobId))
    if not result.applied:
        headers = {}  # over the per-user cap: answered at once, the preference not honoured
    return jsonify(job_detail(process_db(), result.job)), 200, headers


@endpoint(bp, "GET", "", summary="The caller's jobs, newest first", query=JobsQuery, response=JobPage,
          links={"GetJob": Link("jobs.get_job", "The first job of the page",
                                parameters={"jobId": "$response.body#/items/0/jobId"})})
def list_jobs() -> Any:
    q = parse_query(JobsQuery)
    try:
        jobs, next_cursor = user_jobs(process_db(), current().user_id, q.status, q.limit, q.cursor)
    except BadCursor as exc:
        raise bad_cursor(exc) from None
    return jsonify(items=[job_view(j) for j in jobs], nextCursor=next_cursor)
