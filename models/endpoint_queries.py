"""Read-side queries about endpoints: plain rows (never the secret) and delivery counts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from tortoise.functions import Count

from models.deliveries import Delivery
from models.endpoints import Endpoint
from models.enums import DeliveryStatus

RECENT_WINDOW_S = 3600.0  # "recent success rate": deliveries finished in the last hour


class EndpointRow(TypedDict):
    id: int
    app_id: int
    app_name: str
    url: str
    description: str
    enabled: bool
    disabled_reason: str | None
    disabled_at: str | None
    event_types: list[str] | None  # None = every event type
    follow_redirects: bool
    max_in_flight: int | None  # None = the engine's default cap
    retry_config: dict[str, Any] | None  # None = the default policy
    failing_since: str | None
    consecutive_failures: int
    previous_secret_expires_at: str | None  # set while a rotated-out secret still signs
    created_at: str
    updated_at: str


class DeliveryStats(TypedDict):
    in_flight: int  # deliveries `running` right now
    succeeded: int  # finished in the recent window
    failed: int


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def endpoint_row(endpoint: Endpoint, app_name: str) -> EndpointRow:
    """Plain row of an endpoint; `app_name` is its application's name."""
    return EndpointRow(
        id=endpoint.id,
        app_id=endpoint.app_id,  # type: ignore[attr-defined]
        app_name=app_name,
        url=endpoint.url,
        description=endpoint.description,
        enabled=endpoint.enabled,
        disabled_reason=endpoint.disabled_reason,
        disabled_at=_iso(endpoint.disabled_at),
        event_types=endpoint.event_types,
        follow_redirects=endpoint.follow_redirects,
        max_in_flight=endpoint.max_in_flight,
        retry_config=endpoint.retry_config,
        failing_since=_iso(endpoint.failing_since),
        consecutive_failures=endpoint.consecutive_failures,
        previous_secret_expires_at=_iso(endpoint.previous_secret_expires_at),
        created_at=_iso(endpoint.created_at) or "",
        updated_at=_iso(endpoint.updated_at) or "",
    )


async def get_endpoint_row(endpoint_id: int) -> EndpointRow | None:
    endpoint = await Endpoint.get_or_none(id=endpoint_id).select_related("app")
    return endpoint_row(endpoint, endpoint.app.name) if endpoint else None


async def list_endpoint_rows() -> list[EndpointRow]:
    """Every endpoint, grouped by application name, then by id."""
    endpoints = await Endpoint.all().select_related("app").order_by("app__name", "id")
    return [endpoint_row(e, e.app.name) for e in endpoints]


async def delivery_stats(window_s: float = RECENT_WINDOW_S) -> dict[int, DeliveryStats]:
    """Per endpoint id: running deliveries now, and outcomes finished within `window_s`.

    Two grouped COUNT queries whatever the number of endpoints; endpoints without any
    delivery are absent (callers default to zeros).
    """
    stats: dict[int, DeliveryStats] = {}

    def bucket(endpoint_id: int) -> DeliveryStats:
        return stats.setdefault(endpoint_id, DeliveryStats(in_flight=0, succeeded=0, failed=0))

    running = await (Delivery.filter(status=DeliveryStatus.RUNNING, endpoint_id__isnull=False)
                     .annotate(n=Count("id")).group_by("endpoint_id")
                     .values("endpoint_id", "n"))
    for row in running:
        bucket(row["endpoint_id"])["in_flight"] = row["n"]
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    finished = await (Delivery.filter(status__in=[DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED],
                                      finished_at__gte=since, endpoint_id__isnull=False)
                      .annotate(n=Count("id")).group_by("endpoint_id", "status")
                      .values("endpoint_id", "status", "n"))
    for row in finished:
        key = "succeeded" if str(row["status"]) == DeliveryStatus.SUCCEEDED.value else "failed"
        bucket(row["endpoint_id"])[key] = row["n"]  # type: ignore[literal-required]
    return stats
