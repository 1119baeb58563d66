"""`GET /metrics` through ASGI, on the real database and Redis."""

from __future__ import annotations

import httpx
import pytest
import pytest_asyncio
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from dashboard.api.metrics import metrics_route
from jobs.metrics import DeliveryMetrics
from jobs.queue import enqueue_delivery
from models.enums import DeadLetterStatus
from tests.factories import make_dead_letter, make_endpoint


@pytest_asyncio.fixture
async def client(db, redis):
    app = Starlette(routes=[metrics_route])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as c:
        yield c


def values(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_needs_no_token_and_reports_the_fleet(client, redis):
    for worker in range(2):  # two worker processes, one flush each
        metrics = DeliveryMetrics()
        metrics.record("succeeded", None, 0.05)
        metrics.record("retrying", "server_error", 0.5)
        metrics.record_retry()
        await metrics.flush(redis)
    endpoint = await make_endpoint("http://127.0.0.1:9/hook")
    entry = await make_dead_letter(endpoint, status=DeadLetterStatus.ACTIVE)
    await enqueue_delivery(redis, entry.delivery_id, 2, defer_s=60)  # type: ignore[attr-defined]

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    got = values(response.text)
    assert got[("webhook_delivery_total", frozenset({("outcome", "succeeded"), ("reason", "")}))] == 2
    assert got[("webhook_delivery_total",
                frozenset({("outcome", "retrying"), ("reason", "server_error")}))] == 2
    assert got[("webhook_retry_total", frozenset())] == 2
    assert got[("webhook_delivery_duration_seconds_count", frozenset())] == 4
    assert got[("webhook_delivery_duration_seconds_sum", frozenset())] == pytest.approx(1.1)
    assert got[("dlq_entries", frozenset({("status", "active")}))] == 1
    assert got[("webhook_queue_depth", frozenset())] == 1
    assert got[("webhook_queue_due", frozenset())] == 0


async def test_metrics_speaks_the_format_the_scraper_asks_for(client):
    openmetrics = await client.get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["content-type"].startswith(
        "application/openmetrics-text; version=1.0.0")
    assert openmetrics.text.endswith("# EOF\n")
    assert "webhook_retry_total 0" in openmetrics.text

    latest = await client.get("/metrics", headers={"accept": "text/plain; version=1.0.0"})
    assert latest.headers["content-type"].startswith(CONTENT_TYPE_LATEST)


def test_metrics_route_is_outside_v1():
    assert (metrics_route.path, metrics_route.methods) == ("/metrics", {"GET", "HEAD"})
