"""`/v1/dlq/retry-all|archive-all|delete-all`, `/v1/endpoints/{id}/resync` and
`/v1/operations…`: bulk operations over REST, thin wrappers over jobs.operations.bulk and
jobs.operations.resync (the rules live there).

Reads need a viewer token; Retry All, archive-all, cancel, pause and resume an operator;
delete-all and re-sync an admin. Mounted by dashboard/api/app.py (`*operation_routes`,
documented with `**operation_bodies`).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dashboard import runtime
from dashboard.api.common import actor, int_param, parse_body, path_id, prepare
from jobs.operations import bulk, resync
from jobs.operations.reasons import REASON_MAX
from models.dlq_filter import DlqFilter
from models.enums import BulkKind, Role


class RetryAllIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: DlqFilter = Field(default_factory=DlqFilter,
                             description="which entries (DLQ filter fields; status is always "
                                         "active); empty: every active entry")
    reason: str | None = Field(None, max_length=REASON_MAX,
                               description="why (stored in the audit row); required when "
                                           "OBSERVATORY_REQUIRE_REASON is set")
    dry_run: bool = Field(False, description="only count: answers {total, snapshot}")
    snapshot: int | None = Field(None, ge=1, description="the snapshot a dry run answered: "
                                                         "acts on exactly that selection")
    canary: bulk.Canary | None = Field(None, description="retry the first `count` first; halt "
                                                         "if more than `max_failure_pct` % fail")


class ByFilterIn(BaseModel):
    """Archive-all / delete-all: the DLQ entries of a scope, counted first with `dry_run`."""

    model_config = ConfigDict(extra="forbid")

    scope: DlqFilter = Field(default_factory=DlqFilter,
                             description="which entries (DLQ filter fields); archive acts on "
                                         "active and resolved entries, delete on every entry "
                                         "that is not retrying")
    reason: str | None = Field(None, max_length=REASON_MAX,
                               description="why (stored in the audit row); required when "
                                           "OBSERVATORY_REQUIRE_REASON is set")
    dry_run: bool = Field(False, description="only count: answers {total, snapshot}")
    snapshot: int | None = Field(None, ge=1, description="the snapshot a dry run answered: "
                                                         "acts on exactly that selection")


class ResyncIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: datetime | None = Field(None, description="only messages created at or after this "
                                                     "(ISO 8601; naive = UTC)")
    reason: str | None = Field(None, max_length=REASON_MAX,
                               description="why (stored in the audit row); required when "
                                           "OBSERVATORY_REQUIRE_REASON is set")
    dry_run: bool = Field(False, description="only count: answers {total, snapshot}")
    snapshot: int | None = Field(None, ge=1, description="the snapshot a dry run answered: "
                                                         "re-sends exactly those messages")


class OperationActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=REASON_MAX,
                               description="why (stored in the audit row)")


async def retry_all(request: Request) -> JSONResponse:
    """Retry every active DLQ entry of a scope in the background (202 with the operation id);
    `dry_run` only counts. Operator."""
    await prepare(request, Role.OPERATOR)
    body = await parse_body(request, RetryAllIn, empty={})
    if body.dry_run:
        return JSONResponse(await bulk.preview(body.scope, snapshot=body.snapshot))
    started = await bulk.start_retry_all(body.scope, actor(request), reason=body.reason,
                                         snapshot=body.snapshot, canary=body.canary,
                                         redis=await runtime.get_redis())
    return JSONResponse(started, status_code=202)


async def _by_filter(request: Request, kind: BulkKind,
                     start: bulk.StartByFilter) -> JSONResponse:
    body = await parse_body(request, ByFilterIn, empty={})
    if body.dry_run:
        return JSONResponse(await bulk.preview(body.scope, snapshot=body.snapshot, kind=kind))
    started = await start(body.scope, actor(request), reason=body.reason,
                          snapshot=body.snapshot, redis=await runtime.get_redis())
    return JSONResponse(started, status_code=202)


async def archive_all(request: Request) -> JSONResponse:
    """Archive every active or resolved DLQ entry of a scope in the background (202 with the
    operation id); `dry_run` only counts. Operator."""
    await prepare(request, Role.OPERATOR)
    return await _by_filter(request, BulkKind.ARCHIVE, bulk.start_archive_all)


async def delete_all(request: Request) -> JSONResponse:
    """Delete every DLQ entry of a scope that is not retrying, in the background (202 with
    the operation id); `dry_run` only counts. Admin."""
    await prepare(request, Role.ADMIN)
    return await _by_filter(request, BulkKind.DELETE, bulk.start_delete_all)


async def resync_endpoint(request: Request) -> JSONResponse:
    """Re-send every message the endpoint received (or those since `since`) as new
    deliveries, in the background (202 with the operation id); `dry_run` only counts; a
    disabled endpoint is a 409. Admin."""
    await prepare(request, Role.ADMIN)
    body = await parse_body(request, ResyncIn, empty={})
    endpoint_id = path_id(request)
    if body.dry_run:
        return JSONResponse(await resync.preview_resync(endpoint_id, since=body.since,
                                                        snapshot=body.snapshot))
    started = await resync.start_resync(endpoint_id, actor(request), since=body.since,
                                        reason=body.reason, snapshot=body.snapshot,
                                        redis=await runtime.get_redis())
    return JSONResponse(started, status_code=202)


async def list_operations(request: Request) -> JSONResponse:
    """Recent bulk operations, newest first (`limit` 1–100)."""
    await prepare(request, Role.VIEWER)
    limit = int_param(request, "limit", 20, hi=100) or 20
    return JSONResponse({"operations": await bulk.list_operations(
        redis=await runtime.get_redis(), limit=limit)})


async def get_operation(request: Request) -> JSONResponse:
    """One bulk operation: state, live figures, ETA."""
    await prepare(request, Role.VIEWER)
    return JSONResponse(await bulk.get_operation(path_id(request),
                                                 redis=await runtime.get_redis()))


async def _act(request: Request, action: bulk.ControlAction) -> JSONResponse:
    await prepare(request, Role.OPERATOR)
    body = await parse_body(request, OperationActionIn, empty={})
    return JSONResponse(await action(path_id(request), actor(request), reason=body.reason,
                                     redis=await runtime.get_redis()))


async def cancel_operation(request: Request) -> JSONResponse:
    """Cancel a bulk operation: nothing new starts, deliveries in flight finish. Operator."""
    return await _act(request, bulk.cancel_operation)


async def pause_operation(request: Request) -> JSONResponse:
    """Pause a running bulk operation. Operator."""
    return await _act(request, bulk.pause_operation)


async def resume_operation(request: Request) -> JSONResponse:
    """Resume a paused (or canary-halted) bulk operation. Operator."""
    return await _act(request, bulk.resume_operation)


operation_routes: list[Route] = [
    Route("/v1/dlq/retry-all", retry_all, methods=["POST"]),
    Route("/v1/dlq/archive-all", archive_all, methods=["POST"]),
    Route("/v1/dlq/delete-all", delete_all, methods=["POST"]),
    Route("/v1/endpoints/{id:int}/resync", resync_endpoint, methods=["POST"]),
    Route("/v1/operations", list_operations, methods=["GET"]),
    Route("/v1/operations/{id:int}", get_operation, methods=["GET"]),
    Route("/v1/operations/{id:int}/cancel", cancel_operation, methods=["POST"]),
    Route("/v1/operations/{id:int}/pause", pause_operation, methods=["POST"]),
    Route("/v1/operations/{id:int}/resume", resume_operation, methods=["POST"]),
]

operation_bodies: dict[str, type] = {
    "retry_all": RetryAllIn,
    "archive_all": ByFilterIn,
    "delete_all": ByFilterIn,
    "resync_endpoint": ResyncIn,
    "cancel_operation": OperationActionIn,
    "pause_operation": OperationActionIn,
    "resume_operation": OperationActionIn,
}
