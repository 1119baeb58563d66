"""State-change events on Redis pub/sub, for the live dashboard.

Every event is a small JSON object `{"type": ..., ...}` on the channel
`{namespace}:events` (see models.config.Settings.events_channel). Types in use:
`delivery.updated` (id, status; ids, status for a fast-lane batch, one per resulting status;
or operation_id, status, count for a bulk cancel), `dlq.changed` (id, status; ids, status for a
fast-lane batch; or operation_id, status, count for many), `cron.changed` (name; `*` after the missed-tick sweep),
`agent.heartbeat` (id), `agent.zombie` (id), `scaling.event` (id, direction), `bulk.progress`
(id, state, total, completed, succeeded, failed, cancelled, skipped; once per batch).
Subscribers treat them as "refresh that panel" hints.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from models.config import get_settings


def encode_event(event: dict[str, Any]) -> str:
    """An event as it is published."""
    return json.dumps(event, default=str)


def publish_commands(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """The PUBLISH commands of `events`, for a caller that sends them in its own pipeline
    together with other writes (`pipe.execute_command(*command)`)."""
    channel = get_settings().events_channel
    return [("PUBLISH", channel, encode_event(event)) for event in events]


async def publish_events(redis: Redis, events: list[dict[str, Any]]) -> None:
    """Publish several events in one round trip (coalesced per batch)."""
    if not events:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for command in publish_commands(events):
            pipe.execute_command(*command)
        await pipe.execute()


async def publish_event(redis: Redis, type_: str, **fields: Any) -> None:
    await publish_events(redis, [{"type": type_, **fields}])
