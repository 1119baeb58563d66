"""The OpenAPI 3.1 document of `/v1`, built from the routes and their pydantic bodies."""

from __future__ import annotations

import inspect
import re
from typing import Any

from pydantic import BaseModel
from starlette.routing import Route

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "details": {"type": "object"}}, "required": ["code", "message"]}},
}


def build_openapi(routes: list[Route], bodies: dict[str, type[BaseModel]],
                  public: set[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """One operation per route and method; `bodies` maps endpoint names to request models
    (required unless the name is in `optional`: an empty body is accepted)."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for route in routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        name = route.endpoint.__name__
        doc = inspect.getdoc(route.endpoint) or name.replace("_", " ")
        for method in sorted((route.methods or set()) - {"HEAD"}):
            op: dict[str, Any] = {
                "operationId": name, "summary": doc.splitlines()[0],
                "responses": {"2XX": {"description": "Success"},
                              "4XX": {"description": "Error", "content": {"application/json": {
                                  "schema": {"$ref": "#/components/schemas/Error"}}}}},
            }
            # `{id:int}` is an integer; a plain `{name}` a string
            params = re.findall(r"\{(\w+)(:\w+)?\}", route.path)
            if params:
                op["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {
                    "type": "integer" if kind == ":int" else "string"}} for p, kind in params]
            if model := bodies.get(name):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
                op["requestBody"] = {"required": name not in optional, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
            if route.path not in public:
                op["security"] = [{"bearer": []}]
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Observatory API", "version": "1"},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
