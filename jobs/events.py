"""State-change events on Redis pub/sub, for the live dashboard.

Every event is a small JSON object `{"type": ..., ...}` on the channel
`{namespace}:events` (see models.config.Settings.events_channel). Types in use:
`delivery.updated` (id, status), `dlq.changed` (id, status), `cron.changed` (name; `*` after
the missed-tick sweep),
`agent.heartbeat` (id), `agent.zombie` (id), `scaling.event` (id, direction), `bulk.progress` (id, state, total, completed, succeeded, failed,
cancelled, skipped; once per batch). Subscribers treat them as "refresh that panel" hints.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from models.config import get_settings


async def publish_events(redis: Redis, events: list[dict[str, Any]]) -> None:
    """Publish several events in one round trip (coalesced per batch)."""
    if not events:
        return
    channel = get_settings().events_channel
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.publish(channel, json.dumps(event, default=str))
        await pipe.execute()


async def publish_event(redis: Redis, type_: str, **fields: Any) -> None:
    await publish_events(redis, [{"type": type_, **fields}])
