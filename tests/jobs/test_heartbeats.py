"""Heartbeats: a beat upserts the agent; an old heartbeat makes it a zombie."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobs.heartbeats import beat
from models import queries
from models.agents import Agent
from models.enums import AgentStatus


async def test_beat_creates_then_refreshes_the_agent(db, redis):
    await beat("worker@a:1", redis)
    first = (await Agent.get(id="worker@a:1")).last_seen
    await beat("worker@a:1", redis)
    assert (await Agent.get(id="worker@a:1")).last_seen >= first
    assert await Agent.all().count() == 1


async def test_stale_alive_agent_is_a_zombie_and_stopped_is_not(db, redis):
    old = datetime.now(UTC) - timedelta(minutes=5)
    await Agent.create(id="fresh", last_seen=datetime.now(UTC))
    await Agent.create(id="stale", last_seen=old)
    await Agent.create(id="gone", last_seen=old, status=AgentStatus.STOPPED)
    rows = {r["id"]: r["status"] for r in await queries.list_agents(zombie_after_s=30)}
    assert rows == {"fresh": "alive", "stale": "zombie", "gone": "stopped"}
