"""Worker heartbeats: each worker process upserts its Agent row every few seconds."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from datetime import UTC, datetime

from redis.asyncio import Redis

from jobs.events import publish_event
from models.agents import Agent
from models.enums import AgentStatus

log = logging.getLogger("observatory.heartbeats")

HEARTBEAT_INTERVAL_S = 5.0


def worker_id() -> str:
    return f"worker@{socket.gethostname()}:{os.getpid()}"


async def beat(agent_id: str, redis: Redis | None = None, kind: str = "worker",
               status: AgentStatus = AgentStatus.ALIVE) -> None:
    """Record one heartbeat of `agent_id` (created on first beat)."""
    await Agent.update_or_create(id=agent_id, defaults={
        "kind": kind, "host": socket.gethostname(), "pid": os.getpid(),
        "status": status, "last_seen": datetime.now(UTC)})
    if redis is not None:
        await publish_event(redis, "agent.heartbeat", id=agent_id, status=status.value)


async def heartbeat_loop(agent_id: str, redis: Redis,
                         interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
    """Beat until cancelled; a failed beat is logged and retried at the next interval."""
    while True:
        try:
            await beat(agent_id, redis)
        except Exception:  # noqa: BLE001 - a heartbeat must never kill the worker
            log.exception("heartbeat of %s failed", agent_id)
        await asyncio.sleep(interval_s)
