"""`/v1/agents…` and `/v1/scaling-events`: the fleet over REST, thin wrappers over
models.queries and jobs.heartbeats.

Reads need a viewer token. A heartbeat needs an operator token: an external agent (a cron box,
a sidecar, another queue's consumer) is given one to report itself. Mounted by
dashboard/api/app.py (`*agents_routes`, documented with `**agents_bodies`).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dashboard import runtime
from dashboard.api.common import int_param, parse_body, prepare
from jobs.errors import ValidationError
from jobs.heartbeats import record_heartbeat
from models import queries
from models.agents import heartbeat_interval_s, zombie_after_s
from models.enums import AgentStatus, Role

AGENT_ID = re.compile(r"^[A-Za-z0-9@:._-]{1,200}$")
METADATA_MAX_BYTES = 4096
STATUSES = ("alive", "zombie", "stopped")


class Totals(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: int = Field(0, ge=0, description="jobs finished since the agent started")
    succeeded: int = Field(0, ge=0, description="work items that succeeded since start")
    failed: int = Field(0, ge=0, description="work items that failed since start")


class HeartbeatIn(BaseModel):
    """One beat of an external agent; every field is optional (the first beat creates it)."""

    model_config = ConfigDict(extra="forbid")

    kind: str | None = Field(None, min_length=1, max_length=32, pattern=r"^[a-z0-9_.-]+$",
                             description="what it is (default `agent`)")
    host: str | None = Field(None, max_length=200)
    pid: int | None = Field(None, ge=1)
    queue: str | None = Field(None, max_length=200)
    version: str | None = Field(None, max_length=64)
    running: int | None = Field(None, ge=0, description="jobs running now")
    totals: Totals | None = None
    status: Literal["alive", "stopped"] = Field(
        "alive", description="`stopped`: a clean exit (never a zombie)")
    metadata: dict[str, Any] | None = Field(
        None, description=f"free-form, at most {METADATA_MAX_BYTES} bytes of JSON")

    @field_validator("metadata")
    @classmethod
    def _bounded(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value, default=str)) > METADATA_MAX_BYTES:
            raise ValueError(f"at most {METADATA_MAX_BYTES} bytes of JSON")
        return value


def _window() -> dict[str, float]:
    return {"heartbeat_interval_s": heartbeat_interval_s(), "zombie_after_s": zombie_after_s()}


async def list_agents(request: Request) -> JSONResponse:
    """List workers and agents (zombies first) with status alive|zombie|stopped."""
    await prepare(request, Role.VIEWER)
    status = request.query_params.get("status") or None
    if status is not None and status not in STATUSES:
        raise ValidationError(f"status: must be one of {', '.join(STATUSES)}, got {status!r}",
                              {"fields": [{"field": "status", "rule": "one_of"}]})
    limit = int_param(request, "limit", 200, hi=1000) or 200
    agents = await queries.list_agents(status=status, limit=limit)
    return JSONResponse({"agents": agents, **_window()})


async def agent_heartbeat(request: Request) -> JSONResponse:
    """Record a heartbeat of an external agent (created on its first beat)."""
    await prepare(request, Role.OPERATOR)
    agent_id = request.path_params["id"]
    if not AGENT_ID.match(agent_id):
        raise ValidationError("id: 1 to 200 characters among letters, digits and @ : . _ -",
                              {"fields": [{"field": "id", "rule": "pattern"}]})
    body = await parse_body(request, HeartbeatIn, empty={})
    report: dict[str, Any] = body.model_dump(exclude_none=True, exclude={"totals", "status"})
    if body.totals is not None:
        report.update(jobs_done=body.totals.jobs, succeeded=body.totals.succeeded,
                      failed=body.totals.failed)
    agent = await record_heartbeat(agent_id, report, await runtime.get_redis(),
                                   AgentStatus(body.status))
    return JSONResponse(queries.agent_row(agent, datetime.now(UTC), zombie_after_s()))


async def list_scaling_events(request: Request) -> JSONResponse:
    """List recent scaling events (newest first)."""
    await prepare(request, Role.VIEWER)
    limit = int_param(request, "limit", 50, hi=500) or 50
    return JSONResponse({"events": await queries.list_scaling_events(limit)})


agents_routes: list[Route] = [
    Route("/v1/agents", list_agents, methods=["GET"]),
    Route("/v1/agents/{id}/heartbeat", agent_heartbeat, methods=["POST"]),
    Route("/v1/scaling-events", list_scaling_events, methods=["GET"]),
]

agents_bodies: dict[str, type[BaseModel]] = {"agent_heartbeat": HeartbeatIn}
