"""`/v1/dlq…` and `/v1/audit` REST routes: thin wrappers over jobs.operations (the rules
live there).

Reads (list, show, stats, export, audit) need a viewer token; retry, status changes and
archive an operator; delete an admin. Mounted by dashboard/api/app.py (`*dlq_routes`,
documented with `**dlq_bodies`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from dashboard import runtime
from dashboard.api.common import actor, int_param, json_body, parse_body, path_id, prepare
from dashboard.api.errors import ApiError
from jobs.operations import dlq as ops
from jobs.operations.reasons import REASON_MAX
from jobs.operations.retry import RetryOverrides, retry_dead_letter
from models import queries
from models.dlq_filter import DlqFilter
from models.enums import DeadLetterStatus, Role

MAX_PAGE = 200
EXPORT_FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
CSV_COLUMNS = list(ops.ExportRow.__annotations__)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReasonIn(_Body):
    reason: str | None = Field(None, max_length=REASON_MAX,
                               description="why (stored in the audit row); may be required "
                                           "by OBSERVATORY_REQUIRE_REASON")


class RetryIn(_Body):
    sandbox: bool = Field(False, description="send to `overrides.url` instead of the endpoint; "
                                              "the entry keeps its status")
    overrides: RetryOverrides | None = None


class StatusIn(ReasonIn):
    status: DeadLetterStatus = Field(description="the new status (only legal transitions)")


class AuditQuery(_Body):
    action: str | None = Field(None, min_length=1, max_length=100)
    actor: str | None = Field(None, min_length=1, max_length=200)
    target_type: str | None = Field(None, min_length=1, max_length=50)
    target_id: str | None = Field(None, min_length=1, max_length=100)


def _paging(request: Request) -> tuple[int, int | None]:
    return (int_param(request, "limit", 50, hi=MAX_PAGE) or 50,
            int_param(request, "cursor", None))


async def list_dlq(request: Request) -> JSONResponse:
    """DLQ entries, newest first (filters: status, event_type, endpoint_id, app_id, since,
    until, q; `limit` 1–200 and `cursor` from `next_cursor`)."""
    await prepare(request, Role.VIEWER)
    limit, cursor = _paging(request)
    f = DlqFilter.from_query(request.query_params)
    return JSONResponse(await queries.dead_letter_page(f, limit=limit, cursor=cursor))


async def get_dlq_entry(request: Request) -> JSONResponse:
    """One DLQ entry with payload, error history, policy and the attempts of its deliveries."""
    await prepare(request, Role.VIEWER)
    return JSONResponse(await ops.entry_detail(path_id(request)))


async def retry_dlq_entry(request: Request) -> JSONResponse:
    """Retry one DLQ entry as a new delivery (or a sandbox retry elsewhere). Operator."""
    await prepare(request, Role.OPERATOR)
    body = await parse_body(request, RetryIn, empty={})
    result = await retry_dead_letter(path_id(request), actor(request),
                                     redis=await runtime.get_redis(), sandbox=body.sandbox,
                                     overrides=body.overrides)
    return JSONResponse(result, status_code=202)


async def set_dlq_status(request: Request) -> JSONResponse:
    """Change a DLQ entry's status along a legal transition. Operator."""
    await prepare(request, Role.OPERATOR)
    body = await parse_body(request, StatusIn)
    return JSONResponse(await ops.set_status(path_id(request), body.status, actor(request),
                                             reason=body.reason,
                                             redis=await runtime.get_redis()))


async def archive_dlq_entry(request: Request) -> JSONResponse:
    """Archive a DLQ entry (body optional: `{"reason": ...}`). Operator."""
    await prepare(request, Role.OPERATOR)
    body = await parse_body(request, ReasonIn, empty={})
    return JSONResponse(await ops.archive(path_id(request), actor(request), reason=body.reason,
                                          redis=await runtime.get_redis()))


async def delete_dlq_entry(request: Request) -> JSONResponse:
    """Delete a DLQ entry for good (reason in the body or `?reason=`); the audit row stays.
    Admin."""
    await prepare(request, Role.ADMIN)
    body = ReasonIn.model_validate(await json_body(request, empty={}))
    reason = body.reason if body.reason is not None else request.query_params.get("reason")
    deleted = await ops.delete(path_id(request), actor(request), reason=reason,
                               redis=await runtime.get_redis())
    return JSONResponse({"deleted": deleted})


async def dlq_stats(request: Request) -> JSONResponse:
    """Totals by status, event type and endpoint, oldest and newest entry (same filters as the
    list; every status unless `status` is given)."""
    await prepare(request, Role.VIEWER)
    return JSONResponse(await ops.stats(DlqFilter.from_query(request.query_params)))


async def export_dlq(request: Request) -> StreamingResponse:
    """Stream the entries matching the filters as `format=csv` (default) or `jsonl`."""
    await prepare(request, Role.VIEWER)
    fmt = request.query_params.get("format") or "csv"
    if fmt not in EXPORT_FORMATS:
        raise ApiError(422, "validation_error", "format: must be one of csv, jsonl",
                       {"fields": [{"field": "format", "rule": "enum",
                                    "message": "must be one of csv, jsonl"}]})
    f = DlqFilter.from_query(request.query_params)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    lines = csv_lines(ops.export_rows(f)) if fmt == "csv" else jsonl_lines(ops.export_rows(f))
    return StreamingResponse(lines, media_type=EXPORT_FORMATS[fmt], headers={
        "Content-Disposition": f'attachment; filename="dlq-export-{stamp}.{fmt}"'})


async def csv_lines(rows: AsyncIterator[ops.ExportRow]) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    async for row in rows:
        writer.writerow(_flat(row))
        if buffer.tell() > 64_000:  # a chunk per ~64 kB, not per row
            yield _drain(buffer)
    yield _drain(buffer)


def _flat(row: ops.ExportRow) -> dict[str, Any]:
    """CSV cells: the payload as compact JSON, nulls as empty cells."""
    flat: dict[str, Any] = dict(row)
    flat["payload"] = json.dumps(row["payload"], separators=(",", ":"), default=str)
    return {k: "" if v is None else v for k, v in flat.items()}


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


async def jsonl_lines(rows: AsyncIterator[ops.ExportRow]) -> AsyncIterator[str]:
    async for row in rows:
        yield json.dumps(row, default=str) + "\n"


async def list_audit(request: Request) -> JSONResponse:
    """Audit rows, newest first (filters: action, actor, target_type, target_id; `limit` and
    `cursor`)."""
    await prepare(request, Role.VIEWER)
    limit, cursor = _paging(request)
    params = {k: v for k, v in request.query_params.items()
              if k not in ("limit", "cursor") and v != ""}
    query = AuditQuery.model_validate(params)
    return JSONResponse(await queries.audit_page(**query.model_dump(), limit=limit,
                                                 cursor=cursor))


dlq_routes = [
    Route("/v1/dlq", list_dlq, methods=["GET"]),
    # static paths before `{id:int}` (the int converter would not match them anyway)
    Route("/v1/dlq/stats", dlq_stats, methods=["GET"]),
    Route("/v1/dlq/export", export_dlq, methods=["GET"]),
    Route("/v1/dlq/{id:int}", get_dlq_entry, methods=["GET"]),
    Route("/v1/dlq/{id:int}", delete_dlq_entry, methods=["DELETE"]),
    Route("/v1/dlq/{id:int}/retry", retry_dlq_entry, methods=["POST"]),
    Route("/v1/dlq/{id:int}/status", set_dlq_status, methods=["PUT"]),
    Route("/v1/dlq/{id:int}/archive", archive_dlq_entry, methods=["POST"]),
    Route("/v1/audit", list_audit, methods=["GET"]),
]

#: request bodies for the OpenAPI document, by route function name
dlq_bodies: dict[str, type[BaseModel]] = {
    "retry_dlq_entry": RetryIn,
    "set_dlq_status": StatusIn,
    "archive_dlq_entry": ReasonIn,
    "delete_dlq_entry": ReasonIn,
}
