"""A job as Purser shows it: one serializer for ``GET /api/jobs/<id>`` and webhook events.

A webhook event's ``data`` is documented as "the job as GET /api/jobs/<id> shows it";
both build it here, so a field added to the route reaches the events too (the
contract test in ``tests/webhooks`` compares the two for every job type).
"""

from __future__ import annotations

from typing import Any

from pymongo.database import Database

from services.jobs import job_view
from services.refunds import lists_refunds, refunds_by_original, with_refunds


def job_detail(db: Database, job: dict[str, Any], *, refunds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The job's public view with, for a settled unlock, gift, subscription charge, transfer or
    top-up, what was given back so far (``refunds``, ``refunded``). ``refunds``: already read."""
    return with_refunds(db, job_view(job), refunds=refunds)


def job_details(db: Database, jobs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """:func:`job_detail` of many jobs by id, their refunds read in one query."""
    views = {job["_id"]: job_view(job) for job in jobs}
    wanted = [job_id for job_id, view in views.items() if lists_refunds(view)]
    found = refunds_by_original(db, wanted)
    return {job_id: with_refunds(db, view, refunds=found.get(job_id, [])) for job_id, view in views.items()}
