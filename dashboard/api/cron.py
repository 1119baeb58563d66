"""`/v1/cron…` REST routes: the schedule, each job's runs, run now, pause/resume, retry.

Thin wrappers over jobs.operations.cron (the rules live there). Reads need a viewer token,
actions an operator. Mounted by dashboard/api/app.py (`*cron_routes`, documented with
`**cron_bodies`: no action takes a body).
"""

from __future__ import annotations

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dashboard import runtime
from dashboard.api.common import actor, int_param, path_id, prepare
from dashboard.api.errors import ApiError
from jobs.errors import NotFoundError
from jobs.operations import cron as ops
from models import queries
from models.enums import CronRunStatus, Role

MAX_PAGE = 200


def _name(request: Request) -> str:
    return str(request.path_params["name"])


async def _known(name: str) -> None:
    if not await queries.list_cron_jobs(name):
        raise NotFoundError(f"cron job {name!r} does not exist (see GET /v1/cron for the names)")


async def list_cron(request: Request) -> JSONResponse:
    """Cron jobs: schedule, paused, last run, missed/failed in 24 h, next runs (24 h, max 50)."""
    await prepare(request, Role.VIEWER)
    return JSONResponse({"jobs": await queries.list_cron_jobs()})


async def list_cron_runs(request: Request) -> JSONResponse:
    """Runs of one cron job, newest first (`status`, `limit` 1–200, `cursor`)."""
    await prepare(request, Role.VIEWER)
    name = _name(request)
    await _known(name)
    status = request.query_params.get("status") or None
    if status is not None and status not in set(CronRunStatus):
        raise ApiError(422, "validation_error",
                       f"status: must be one of {', '.join(CronRunStatus)}",
                       {"fields": [{"field": "status", "rule": "enum"}]})
    page = await queries.cron_run_page(
        name, status=status, limit=int_param(request, "limit", 50, hi=MAX_PAGE) or 50,
        cursor=int_param(request, "cursor", None))
    return JSONResponse(page)


async def run_cron_now(request: Request) -> JSONResponse:
    """Run a cron job now (even paused): a new pending run, handed to the workers."""
    await prepare(request, Role.OPERATOR)
    run = await ops.run_now(_name(request), actor(request), redis=await runtime.get_redis())
    return JSONResponse(run, status_code=202)


async def pause_cron(request: Request) -> JSONResponse:
    """Pause a cron job: its ticks are skipped (not run, not missed) until resumed."""
    await prepare(request, Role.OPERATOR)
    return JSONResponse(await ops.pause(_name(request), actor(request),
                                        redis=await runtime.get_redis()))


async def resume_cron(request: Request) -> JSONResponse:
    """Resume a paused cron job from its next tick."""
    await prepare(request, Role.OPERATOR)
    return JSONResponse(await ops.resume(_name(request), actor(request),
                                         redis=await runtime.get_redis()))


async def retry_cron_run(request: Request) -> JSONResponse:
    """Retry a failed or missed run (409 otherwise, or when already retried): a new run."""
    await prepare(request, Role.OPERATOR)
    run = await ops.retry_run(path_id(request), actor(request), redis=await runtime.get_redis())
    return JSONResponse(run, status_code=202)


cron_routes: list[Route] = [
    Route("/v1/cron", list_cron, methods=["GET"]),
    Route("/v1/cron/runs/{id:int}/retry", retry_cron_run, methods=["POST"]),
    Route("/v1/cron/{name}/runs", list_cron_runs, methods=["GET"]),
    Route("/v1/cron/{name}/run", run_cron_now, methods=["POST"]),
    Route("/v1/cron/{name}/pause", pause_cron, methods=["POST"]),
    Route("/v1/cron/{name}/resume", resume_cron, methods=["POST"]),
]

cron_bodies: dict[str, type[BaseModel]] = {}
