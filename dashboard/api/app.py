"""The `/v1` REST API: thin routes over models.queries and jobs.operations."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dashboard import runtime
from dashboard.api.common import parse_body, prepare
from dashboard.api.agents import agents_bodies, agents_routes
from dashboard.api.cron import cron_bodies, cron_routes
from dashboard.api.dlq import dlq_bodies, dlq_routes
from dashboard.api.docs import docs_route
from dashboard.api.endpoints import endpoint_bodies, endpoint_routes
from dashboard.api.errors import EXCEPTION_HANDLERS, ApiError
from dashboard.api.metrics import metrics_route
from dashboard.api.openapi import build_openapi
from dashboard.api.operations import operation_bodies, operation_routes
from dashboard.api.schemas import AppIn, EndpointIn, MessageBatchIn, MessageIn
from jobs.errors import NotFoundError
from jobs.operations.publish import publish_message, publish_messages
from jobs.signing import generate_secret
from models.deliveries import Attempt, Delivery
from models.endpoints import Application, Endpoint
from models.enums import Role

async def health(request: Request) -> JSONResponse:
    """Liveness of the API, its database and Redis (no token needed)."""
    checks: dict[str, str] = {}
    try:
        await runtime.ensure_db()
        await Application.all().limit(1)
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        checks["database"] = f"error: {exc}"
    try:
        await (await runtime.get_redis()).ping()
        checks["redis"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["redis"] = f"error: {exc}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "degraded", **checks},
                        status_code=200 if ok else 503)


def _app_json(app: Application) -> dict[str, Any]:
    return {"id": app.id, "name": app.name, "created_at": app.created_at.isoformat()}


def _endpoint_json(e: Endpoint, with_secret: bool = False) -> dict[str, Any]:
    data = {"id": e.id, "app_id": e.app_id, "url": e.url,  # type: ignore[attr-defined]
            "description": e.description, "enabled": e.enabled,
            "disabled_reason": e.disabled_reason, "event_types": e.event_types,
            "retry_config": e.retry_config, "created_at": e.created_at.isoformat()}
    if with_secret:
        data["secret"] = e.secret
    return data


async def create_app(request: Request) -> JSONResponse:
    """Create an application (a producer/tenant). Admin."""
    await prepare(request, Role.ADMIN)
    body = await parse_body(request, AppIn)
    if await Application.exists(name=body.name):
        raise ApiError(409, "conflict", f"name: an application named '{body.name}' exists")
    return JSONResponse(_app_json(await Application.create(name=body.name)), status_code=201)


async def list_apps(request: Request) -> JSONResponse:
    """List applications."""
    await prepare(request, Role.VIEWER)
    return JSONResponse({"apps": [_app_json(a) for a in await Application.all().order_by("id")]})


async def create_endpoint(request: Request) -> JSONResponse:
    """Create an endpoint; the answer carries its signing secret. Admin."""
    await prepare(request, Role.ADMIN)
    body = await parse_body(request, EndpointIn)
    if not await Application.exists(id=body.app_id):
        raise NotFoundError(f"app_id: application {body.app_id} does not exist")
    endpoint = await Endpoint.create(
        app_id=body.app_id, url=body.url, description=body.description,
        event_types=body.event_types, secret=generate_secret(),
        retry_config=body.retry_config.model_dump() if body.retry_config else None)
    return JSONResponse(_endpoint_json(endpoint, with_secret=True), status_code=201)


async def list_endpoints(request: Request) -> JSONResponse:
    """List endpoints."""
    await prepare(request, Role.VIEWER)
    rows = await Endpoint.all().order_by("id")
    return JSONResponse({"endpoints": [_endpoint_json(e) for e in rows]})


async def publish(request: Request) -> JSONResponse:
    """Publish a message: one delivery per subscribed endpoint. Operator."""
    await prepare(request, Role.OPERATOR)
    body = await parse_body(request, MessageIn)
    result = await publish_message(body.app_id, body.event_type, body.payload,
                                   body.idempotency_key, redis=await runtime.get_redis())
    return JSONResponse(result, status_code=200 if result["idempotent_replay"] else 202)


async def publish_batch(request: Request) -> JSONResponse:
    """Publish up to 1,000 messages at once; results per item, in order. Operator."""
    await prepare(request, Role.OPERATOR)
    body = await parse_body(request, MessageBatchIn)
    results = await publish_messages([m.model_dump() for m in body.messages],
                                     redis=await runtime.get_redis())
    return JSONResponse({"results": results}, status_code=207 if not all(
        r["ok"] for r in results) else 202)


async def get_delivery(request: Request) -> JSONResponse:
    """One delivery with its attempts."""
    await prepare(request, Role.VIEWER)
    delivery = await Delivery.get_or_none(id=request.path_params["id"])
    if delivery is None:
        raise NotFoundError(f"delivery {request.path_params['id']} does not exist")
    attempts = await Attempt.filter(delivery_id=delivery.id).order_by("number")
    return JSONResponse({
        "id": delivery.id, "message_id": delivery.message_id,  # type: ignore[attr-defined]
        "endpoint_id": delivery.endpoint_id, "status": delivery.status.value,  # type: ignore[attr-defined]
        "attempts_made": delivery.attempts, "retry_of": delivery.retry_of_id,  # type: ignore[attr-defined]
        "last_error": delivery.last_error, "metadata": delivery.metadata,
        "created_at": delivery.created_at.isoformat(),
        "attempts": [{"number": a.number, "started_at": a.started_at.isoformat(),
                      "duration_ms": a.duration_ms, "status_code": a.status_code,
                      "outcome": a.outcome, "error": a.error_class,
                      "response_excerpt": a.response_excerpt} for a in attempts],
    })


async def openapi(request: Request) -> JSONResponse:
    """This API's OpenAPI document."""
    return JSONResponse(OPENAPI)


routes = [
    Route("/v1/health", health, methods=["GET"]),
    Route("/v1/openapi.json", openapi, methods=["GET"]),
    docs_route,
    Route("/v1/apps", create_app, methods=["POST"]),
    Route("/v1/apps", list_apps, methods=["GET"]),
    Route("/v1/endpoints", create_endpoint, methods=["POST"]),
    Route("/v1/endpoints", list_endpoints, methods=["GET"]),
    Route("/v1/messages", publish, methods=["POST"]),
    Route("/v1/messages/batch", publish_batch, methods=["POST"]),
    Route("/v1/deliveries/{id:int}", get_delivery, methods=["GET"]),
    *dlq_routes,
    *operation_routes,
    *cron_routes,
    *agents_routes,
    *endpoint_routes,
]

OPENAPI = build_openapi(
    routes, bodies={"create_app": AppIn, "create_endpoint": EndpointIn, "publish": MessageIn,
            "publish_batch": MessageBatchIn, **endpoint_bodies, **dlq_bodies,
            **operation_bodies, **cron_bodies, **agents_bodies},
    public={"/v1/health", "/v1/openapi.json", "/v1/docs"},
    optional=frozenset({"retry_dlq_entry", "archive_dlq_entry", "delete_dlq_entry", "rotate_secret",
                        "cancel_operation", "pause_operation", "resume_operation",
                        "archive_all", "delete_all", "resync_endpoint"}))

api = Starlette(routes=[*routes, metrics_route], exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
