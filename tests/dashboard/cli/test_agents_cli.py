"""`observatory agents list|scaling-events|beat` against the real API in a subprocess
(fixtures of tests/dashboard/cli/conftest.py; its server uses the default 15 s window)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from models.agents import Agent, ScalingEvent
from models.enums import AgentStatus


async def test_agents_list_shows_zombies_first_with_their_figures(db, cli):
    now = datetime.now(UTC)
    await Agent.create(id="worker@a:1", host="a", pid=11, queue="obs:queue", last_seen=now,
                       running=2, jobs_done=9, succeeded=120, failed=3)
    await Agent.create(id="worker@b:2", host="b", pid=22, last_seen=now - timedelta(minutes=2))

    result = cli("agents", "list", token="viewer")

    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "worker@" in line]
    assert "worker@b:2" in lines[0] and "zombie" in lines[0]
    assert "worker@a:1" in lines[1] and "alive" in lines[1]
    assert "9 jobs · 120 ok · 3 failed" in lines[1]
    listing = json.loads(cli("agents", "list", "--status", "zombie", "--format", "json",
                             token="viewer").stdout)
    assert [a["id"] for a in listing["agents"]] == ["worker@b:2"]


async def test_agents_list_refuses_an_unknown_status(db, cli):
    result = cli("agents", "list", "--status", "dead", token="viewer")
    assert result.exit_code == 1
    assert "status: must be one of alive, zombie, stopped" in result.stderr


async def test_scaling_events_table(db, cli):
    await ScalingEvent.create(direction="scale_up", reason="queue depth 900 >= 500",
                              queue_depth=900, oldest_age_s=12.5, workers=2,
                              suggested_workers=4)
    result = cli("agents", "scaling-events", token="viewer")
    assert result.exit_code == 0, result.output
    assert "scale_up" in result.stdout and "queue depth 900 >= 500" in result.stdout
    assert "12.5 s" in result.stdout


async def test_beat_needs_an_operator_and_deregisters_with_stopped(db, cli):
    refused = cli("agents", "beat", "backup@db1", token="viewer")
    assert refused.exit_code == 1 and "Role 'viewer'" in refused.stderr
    assert not await Agent.exists()

    ok = cli("agents", "beat", "backup@db1", "--kind", "cron-box", "--running", "2",
             token="operator")
    assert ok.exit_code == 0, ok.output
    assert "Agent backup@db1: alive" in ok.stdout
    agent = await Agent.get(id="backup@db1")
    assert (agent.kind, agent.running) == ("cron-box", 2)
    cli("agents", "beat", "backup@db1", "--stopped", token="operator")
    assert (await Agent.get(id="backup@db1")).status == AgentStatus.STOPPED
