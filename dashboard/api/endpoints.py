"""`/v1/endpoints/{id}…` REST routes: thin wrappers over jobs.operations.endpoints.

Reads need a viewer token, changes an admin one. Mount with `routes = [..., *endpoint_routes]`
and document with `bodies={..., **endpoint_bodies}` (see dashboard/api/app.py).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dashboard.api.common import actor, json_body, parse_body, path_id, prepare
from jobs.errors import NotFoundError
from jobs.operations import endpoints as ops
from jobs.policy import RetryPolicy
from models.endpoint_queries import get_endpoint_row
from models.enums import Role

class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndpointPatch(_Body):
    """Fields to change; leave a field out to keep it. `null` resets event_types (every
    event type) and max_in_flight (the default cap)."""

    url: str | None = Field(None, min_length=1, max_length=2048)
    description: str | None = Field(None, max_length=500)
    event_types: list[str] | None = None
    follow_redirects: bool | None = None
    max_in_flight: int | None = None

    @field_validator("url", "description", "follow_redirects", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("may not be null; leave the field out to keep it")
        return value


class DisableIn(_Body):
    reason: str = Field(min_length=1, max_length=200)


class RotateSecretIn(_Body):
    grace_s: int = Field(ops.DEFAULT_GRACE_S, ge=0, le=ops.MAX_GRACE_S,
                         description="seconds the old secret keeps signing; 0 = stop at once")


async def _prepare(request: Request, role: Role) -> int:
    """Database ready, caller authorised; returns the `{id}` path parameter."""
    await prepare(request, role)
    return path_id(request)


async def get_endpoint(request: Request) -> JSONResponse:
    """One endpoint (its secret is never shown again after creation or rotation)."""
    endpoint_id = await _prepare(request, Role.VIEWER)
    row = await get_endpoint_row(endpoint_id)
    if row is None:
        raise NotFoundError(f"endpoint {endpoint_id} does not exist")
    return JSONResponse(row)


async def patch_endpoint(request: Request) -> JSONResponse:
    """Change an endpoint's url, description, event types, redirects or in-flight cap. Admin."""
    endpoint_id = await _prepare(request, Role.ADMIN)
    body = await parse_body(request, EndpointPatch)
    given = body.model_dump(exclude_unset=True)
    clear = [name for name in ("event_types", "max_in_flight")
             if name in given and given[name] is None]
    values = {k: v for k, v in given.items() if v is not None}
    return JSONResponse(await ops.update_endpoint(endpoint_id, actor(request), clear=clear,
                                                  **values))


async def delete_endpoint(request: Request) -> JSONResponse:
    """Delete an endpoint; its deliveries and DLQ entries stay. Admin."""
    endpoint_id = await _prepare(request, Role.ADMIN)
    row = await ops.delete_endpoint(endpoint_id, actor(request))
    return JSONResponse({"id": row["id"], "deleted": True})


async def get_retry_config(request: Request) -> JSONResponse:
    """The endpoint's effective retry policy and whether it is the default one."""
    endpoint_id = await _prepare(request, Role.VIEWER)
    return JSONResponse(await ops.get_retry_config(endpoint_id))


async def put_retry_config(request: Request) -> JSONResponse:
    """Set the endpoint's retry policy (a RetryPolicy object), or null for the default. Admin."""
    endpoint_id = await _prepare(request, Role.ADMIN)
    config = await json_body(request)
    return JSONResponse(await ops.set_retry_config(endpoint_id, actor(request), config))


async def rotate_secret(request: Request) -> JSONResponse:
    """New signing secret; the old one keeps signing for `grace_s` (default a day). Admin."""
    endpoint_id = await _prepare(request, Role.ADMIN)
    body = await parse_body(request, RotateSecretIn, empty={})
    return JSONResponse(await ops.rotate_secret(endpoint_id, actor(request), body.grace_s))


async def enable_endpoint(request: Request) -> JSONResponse:
    """Re-enable a disabled endpoint; its failure record starts afresh. Admin."""
    endpoint_id = await _prepare(request, Role.ADMIN)
    return JSONResponse(await ops.enable_endpoint(endpoint_id, actor(request)))


async def disable_endpoint(request: Request) -> JSONResponse:
    """Stop delivering to an endpoint, with a reason. Admin."""
    endpoint_id = await _prepare(request, Role.ADMIN)
    body = await parse_body(request, DisableIn)
    return JSONResponse(await ops.disable_endpoint(endpoint_id, actor(request), body.reason))


endpoint_routes: list[Route] = [
    Route("/v1/endpoints/{id:int}", get_endpoint, methods=["GET"]),
    Route("/v1/endpoints/{id:int}", patch_endpoint, methods=["PATCH"]),
    Route("/v1/endpoints/{id:int}", delete_endpoint, methods=["DELETE"]),
    Route("/v1/endpoints/{id:int}/retry-config", get_retry_config, methods=["GET"]),
    Route("/v1/endpoints/{id:int}/retry-config", put_retry_config, methods=["PUT"]),
    Route("/v1/endpoints/{id:int}/rotate-secret", rotate_secret, methods=["POST"]),
    Route("/v1/endpoints/{id:int}/enable", enable_endpoint, methods=["POST"]),
    Route("/v1/endpoints/{id:int}/disable", disable_endpoint, methods=["POST"]),
]

#: request bodies for the OpenAPI document, by route function name
endpoint_bodies: dict[str, type[BaseModel]] = {
    "patch_endpoint": EndpointPatch,
    "put_retry_config": RetryPolicy,
    "rotate_secret": RotateSecretIn,
    "disable_endpoint": DisableIn,
}
