"""`GET /metrics`: the fleet's delivery metrics in the Prometheus text format (no auth)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dashboard import runtime
from jobs.metrics import FleetCollector, read_fleet_metrics


async def metrics(request: Request) -> Response:
    """Prometheus exposition of the workers' counters (from Redis) and the DLQ/queue gauges.

    Answers 200 even when Redis or the database is down: the metrics of that source are left
    out and `observatory_metrics_source_up{source=...}` says 0.
    """
    with contextlib.suppress(Exception):  # a database down is reported by the snapshot
        await runtime.ensure_db()
    try:
        redis = await runtime.get_redis()
    except Exception:  # noqa: BLE001 - Redis down: reported by the snapshot, not a 500
        redis = None
    snapshot = await read_fleet_metrics(redis)
    # A registry per scrape: the collector holds this scrape's snapshot, so concurrent
    # scrapes never share state, and the process-wide REGISTRY stays untouched.
    registry = CollectorRegistry()
    registry.register(FleetCollector(snapshot))
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(registry), headers={"content-type": content_type})


metrics_route = Route("/metrics", metrics, methods=["GET"])
