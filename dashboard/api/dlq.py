"""`/v1/dlq…` REST routes: thin wrappers over jobs.operations (the rules live there).

Reads need a viewer token; retry and archive an operator; delete an admin. Mounted by
dashboard/api/app.py (`*dlq_routes`, documented with `**dlq_bodies`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dashboard import runtime
from dashboard.api.common import actor, int_param, path_id, prepare
from dashboard.api.errors import ApiError
from jobs.errors import NotFoundError
from jobs.operations.retry import retry_dead_letter
from models import queries
from models.enums import DeadLetterStatus, Role

MAX_PAGE = 200


async def list_dlq(request: Request) -> JSONResponse:
    """DLQ entries, newest first (filters: status; cursor pagination)."""
    await prepare(request, Role.VIEWER)
    limit = int_param(request, "limit", 50, hi=MAX_PAGE) or 50
    cursor = int_param(request, "cursor", None)
    raw_status = request.query_params.get("status")
    statuses = None
    if raw_status:
        try:
            statuses = [DeadLetterStatus(s) for s in raw_status.split(",")]
        except ValueError as exc:
            allowed = ", ".join(s.value for s in DeadLetterStatus)
            raise ApiError(422, "validation_error", f"status: must be one of {allowed}",
                           {"fields": [{"field": "status", "rule": "enum"}]}) from exc
    entries = await queries.list_dead_letters(statuses, limit=limit + 1, before_id=cursor)
    next_cursor = entries[limit - 1]["id"] if len(entries) > limit else None
    return JSONResponse({"entries": entries[:limit], "next_cursor": next_cursor})


async def get_dlq_entry(request: Request) -> JSONResponse:
    """One DLQ entry."""
    await prepare(request, Role.VIEWER)
    entry = await queries.get_dead_letter(path_id(request))
    if entry is None:
        raise NotFoundError(f"DLQ entry {request.path_params['id']} does not exist")
    return JSONResponse(entry)


async def retry_dlq_entry(request: Request) -> JSONResponse:
    """Retry one DLQ entry as a new delivery. Operator."""
    await prepare(request, Role.OPERATOR)
    result = await retry_dead_letter(path_id(request), actor(request),
                                     redis=await runtime.get_redis())
    return JSONResponse(result, status_code=202)


dlq_routes = [
    Route("/v1/dlq", list_dlq, methods=["GET"]),
    Route("/v1/dlq/{id:int}", get_dlq_entry, methods=["GET"]),
    Route("/v1/dlq/{id:int}/retry", retry_dlq_entry, methods=["POST"]),
]

dlq_bodies: dict[str, type] = {}
