"""problem+json answers as typed exceptions carrying the stable ``code`` and ``requestId``."""

from __future__ import annotations

from typing import Any


class PurserError(Exception):
    """Any error answer of the API (RFC 9457 problem details)."""

    def __init__(self, status: int, code: str, detail: str, request_id: str | None = None,
                 problem: dict[str, Any] | None = None, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.request_id = request_id
        self.problem = problem or {}
        self.retry_after = retry_after


class InvalidRequest(PurserError):
    """400/422: the request itself is wrong (validation, idempotency key misuse)."""


class Unauthorized(PurserError):
    """401: missing, expired or invalid token."""


class Forbidden(PurserError):
    """403: the stored role does not allow this."""


class NotFound(PurserError):
    """404."""


class Conflict(PurserError):
    """409: e.g. EMAIL_TAKEN; IDEMPOTENCY_KEY_IN_USE from servers before issue 24 (retried)."""


class RateLimited(PurserError):
    """429: ``retry_after`` seconds until the next request may pass."""


class ServerError(PurserError):
    """5xx after the client's retries: retrying later with the same key is safe."""


class JobFailed(Exception):
    """A job ended ``failed``: the money request was refused by the rules (``code``)."""

    def __init__(self, job: Any) -> None:
        error = job.error or {}
        super().__init__(f"job {job.job_id} failed: {error.get('code')}: {error.get('message')}")
        self.job = job
        self.code = error.get("code")


class WebhookVerificationError(Exception):
    """A webhook whose signature, timestamp or headers do not verify."""


_BY_STATUS: dict[int, type[PurserError]] = {400: InvalidRequest, 401: Unauthorized, 403: Forbidden,
                                            404: NotFound, 409: Conflict, 422: InvalidRequest,
                                            429: RateLimited}


def from_response(status: int, body: Any, headers: dict[str, str]) -> PurserError:
    """The exception for an error answer (problem+json or anything else)."""
    problem = body if isinstance(body, dict) else {}
    code = str(problem.get("code") or f"HTTP_{status}")
    detail = str(problem.get("detail") or problem.get("title") or "")
    request_id = problem.get("requestId") or headers.get("X-Request-ID")
    retry = headers.get("Retry-After")
    retry_after = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else PurserError)
    return cls(status, code, detail, request_id, problem, retry_after)
