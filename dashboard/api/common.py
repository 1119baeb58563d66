"""What every REST route shares: auth + database readiness, JSON bodies, query parameters."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request

from dashboard import runtime
from dashboard.api.auth import require_user
from dashboard.api.errors import ApiError
from models.enums import Role

T = TypeVar("T", bound=BaseModel)


async def prepare(request: Request, role: Role) -> None:
    """Database ready and the caller authorised for `role` (401/403 otherwise)."""
    await runtime.ensure_db()
    request.state.user = await require_user(request, role)


def path_id(request: Request) -> int:
    return int(request.path_params["id"])


def actor(request: Request) -> str:
    """The authorised user's name (after `prepare`), for audit rows."""
    return str(request.state.user.name)


async def json_body(request: Request, *, empty: Any = ...) -> Any:
    """The parsed body; `empty` (when given) stands for a missing body."""
    raw = await request.body()
    if not raw.strip() and empty is not ...:
        return empty
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"Request body is not valid JSON: {exc}") from exc


async def parse_body(request: Request, schema: type[T], **kwargs: Any) -> T:
    """The body validated by `schema` (pydantic errors become 422 with field errors)."""
    return schema.model_validate(await json_body(request, **kwargs))


def int_param(request: Request, name: str, default: int | None, lo: int = 1,
              hi: int | None = None) -> int | None:
    """An integer query parameter within [lo, hi]; 422 naming the parameter otherwise."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) < lo or (hi is not None and int(raw) > hi):
        bound = f" and <= {hi}" if hi is not None else ""
        raise ApiError(422, "validation_error", f"{name}: must be an integer >= {lo}{bound}",
                       {"fields": [{"field": name, "rule": "int_range"}]})
    return int(raw)
