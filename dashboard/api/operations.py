"""`/v1/dlq/retry-all`, `/v1/operations/{id}…` and `/v1/audit`: bulk operations over REST.

Mounted by dashboard/api/app.py (`*operation_routes`, documented with `**operation_bodies`).
"""

from __future__ import annotations

from starlette.routing import Route

operation_routes: list[Route] = []

operation_bodies: dict[str, type] = {}
