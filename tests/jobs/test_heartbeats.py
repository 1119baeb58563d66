"""Heartbeats: workers register and beat with their figures, exit `stopped`; external agents
beat too; an old heartbeat makes an alive agent a zombie."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobs.fleet import sweep_zombies
from jobs.heartbeats import WorkerStats, beat, job_ended, job_started, record_heartbeat
from jobs.operations.publish import publish_message
from jobs.queue import queue_name
from models import queries
from models.agents import Agent, zombie_after_s
from models.deliveries import Delivery
from models.enums import AgentStatus, DeliveryStatus
from tests.factories import make_endpoint
from tests.receiver import Reply

ARQ = str(Path(sys.executable).parent / "arq")
REPO = Path(__file__).resolve().parents[2]


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


# --- a real worker process: registers, beats with its figures, exits clean ------------------


async def _until(predicate, timeout_s: float = 60.0, what: str = "condition"):
    for _ in range(int(timeout_s * 10)):
        if result := await predicate():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(("argv", "loop"), [
    ([sys.executable, "-m", "jobs.run_worker"], "uvloop.Loop"),  # as `observatory up` runs it
    ([ARQ, "jobs.worker.WorkerSettings"], "asyncio.unix_events._UnixSelectorEventLoop"),
], ids=["run_worker", "arq-cli"])
async def test_a_worker_registers_beats_its_figures_and_exits_stopped(db, redis, receiver,
                                                                     monkeypatch, tmp_path,
                                                                     argv, loop):
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "0.5")
    monkeypatch.setenv("HEARTBEAT_ZOMBIE_AFTER", "2")
    receiver.script("/hook", Reply(200, "ok"))
    endpoint = await make_endpoint(receiver.url("/hook"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    output = tmp_path / "worker.log"
    worker = subprocess.Popen(argv, env=env, cwd=REPO, stdout=output.open("wb"),
                              stderr=subprocess.STDOUT)
    try:
        agent = await _until(lambda: Agent.get_or_none(pid=worker.pid), what="registration")
        assert (agent.kind, agent.queue, agent.status) == ("worker", queue_name(),
                                                          AgentStatus.ALIVE)
        assert agent.id.endswith(f":{worker.pid}") and agent.version
        published = await publish_message(endpoint.app_id, "order.created", {"n": 1},
                                          redis=redis)
        delivery_id = published["deliveries"][0]["id"]

        async def counted() -> Agent | None:
            a = await Agent.get(id=agent.id)
            return a if a.succeeded == 1 and a.jobs_done >= 1 else None

        beaten = await _until(counted, what="the beat reporting the delivery")
        assert beaten.last_seen > agent.last_seen and beaten.failed == 0
        assert (await Delivery.get(id=delivery_id)).claimed_by == agent.id
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    stopped = await Agent.get(id=agent.id)
    assert stopped.status == AgentStatus.STOPPED and stopped.stopped_at is not None
    assert (stopped.running, stopped.succeeded) == (0, 1)
    await Agent.filter(id=agent.id).update(last_seen=stopped.last_seen - timedelta(hours=1))
    assert (await sweep_zombies({"redis": redis}))["zombies"] == 0
    assert [r["status"] for r in await queries.list_agents()] == ["stopped"]
    assert (await Delivery.get(id=delivery_id)).status == DeliveryStatus.SUCCEEDED
    started = [json.loads(line) for line in output.read_text().splitlines()
               if line.startswith('{"event": "worker.started"')]
    assert [(s["agent"], s["loop"]) for s in started] == [(agent.id, loop)]


async def test_worker_stats_count_running_jobs_and_outcomes():
    stats = WorkerStats()
    ctx = {"metrics": stats}
    await job_started(dict(ctx))
    await job_started(dict(ctx))  # arq passes each job its own copy of ctx
    await job_ended(dict(ctx))
    stats.record("succeeded", None, 0.01)
    stats.record("retrying", "server_error", 0.02)
    stats.record("failed", "max_attempts_exceeded")
    assert stats.report() == {"running": 1, "jobs_done": 1, "succeeded": 1, "failed": 2}
    assert stats.pending  # still the delivery metrics flushed to Redis
    await job_started({"metrics": None})  # the test worker fixture has plain metrics: no-op


async def test_window_defaults_to_three_missed_beats_and_bad_values_name_the_variable(
        monkeypatch):
    monkeypatch.delenv("HEARTBEAT_ZOMBIE_AFTER", raising=False)
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "2")
    assert zombie_after_s() == 6
    monkeypatch.setenv("HEARTBEAT_ZOMBIE_AFTER", "soon")
    with pytest.raises(ValueError, match="HEARTBEAT_ZOMBIE_AFTER: must be a number of seconds"):
        zombie_after_s()
    monkeypatch.setenv("HEARTBEAT_ZOMBIE_AFTER", "1")
    with pytest.raises(ValueError, match="must be greater than HEARTBEAT_INTERVAL"):
        zombie_after_s()


async def test_zombies_are_listed_first(db, monkeypatch):
    monkeypatch.setenv("HEARTBEAT_ZOMBIE_AFTER", "30")
    now = datetime.now(UTC)
    await Agent.create(id="gone", last_seen=now, status=AgentStatus.STOPPED)
    await Agent.create(id="fresh", last_seen=now - timedelta(seconds=1))
    await Agent.create(id="stale", last_seen=now - timedelta(minutes=5))
    await Agent.create(id="marked", last_seen=now - timedelta(minutes=9),
                       status=AgentStatus.ZOMBIE)
    assert [r["id"] for r in await queries.list_agents()] == ["stale", "marked", "fresh", "gone"]
    assert [r["id"] for r in await queries.list_agents(status="zombie")] == ["stale", "marked"]


async def test_an_external_agent_beats_then_deregisters(db, redis):
    agent = await record_heartbeat("backup@db1", {"running": 2, "queue": "backups"}, redis)
    assert (agent.kind, agent.host, agent.pid, agent.running) == ("agent", "", None, 2)
    agent = await record_heartbeat("backup@db1", {"kind": "cron-box"}, redis,
                                   AgentStatus.STOPPED)
    assert (agent.kind, agent.queue, agent.status) == ("cron-box", "backups",
                                                      AgentStatus.STOPPED)
