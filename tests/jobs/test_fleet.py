"""The fleet: the zombie sweep (marks, hands back what a dead worker held, exactly once, and
records it) and the scaling signals (hysteresis, thresholds, the command and webhook hooks)."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta

import pytest

from jobs.deliver import claim
from jobs.fleet import (SCALE_DOWN, SCALE_UP, ScalingConfig, Signals, Streak, decide,
                        evaluate_scaling, run_command, sweep_zombies)
from jobs.operations.publish import publish_message
from models.agents import Agent, ScalingEvent
from models.audit import AuditLog
from models.config import get_settings
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery
from models.enums import AgentStatus, DeliveryStatus
from tests.factories import make_endpoint
from tests.receiver import Reply

NOW = datetime(2025, 5, 4, 12, 0, tzinfo=UTC)


def policy(max_retries: int) -> dict:
    return {"max_retries": max_retries, "backoff": "fixed", "base_delay": 1, "max_delay": 1,
            "jitter": False}


@pytest.fixture(autouse=True)
def window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv("HEARTBEAT_ZOMBIE_AFTER", "3")
    for name in ("OBSERVATORY_SCALING_COMMAND", "OBSERVATORY_SCALING_WEBHOOK"):
        monkeypatch.delenv(name, raising=False)


async def _agent(agent_id: str, silent_s: float, status: AgentStatus = AgentStatus.ALIVE,
                 queue: str = "") -> Agent:
    return await Agent.create(id=agent_id, host="box", pid=1, queue=queue, status=status,
                              last_seen=datetime.now(UTC) - timedelta(seconds=silent_s))


async def _held_by(agent_id: str, endpoint_url: str, redis, retries: int = 2) -> int:
    """A published delivery claimed (running) by `agent_id`, as its worker would have."""
    endpoint = await make_endpoint(endpoint_url, retry_config=policy(retries))
    published = await publish_message(endpoint.app_id, "order.created", {"n": 1}, redis=redis)
    delivery_id = published["deliveries"][0]["id"]
    assert [d.id for d in await claim([delivery_id], agent_id)] == [delivery_id]
    return delivery_id


# --- zombies ---------------------------------------------------------------------------------

async def test_silent_agent_becomes_zombie_only_after_the_window(db, redis):
    await _agent("worker@a:1", silent_s=2)  # within the 3 s window
    assert (await sweep_zombies({"redis": redis}))["zombies"] == 0
    assert (await Agent.get(id="worker@a:1")).status == AgentStatus.ALIVE

    await Agent.filter(id="worker@a:1").update(last_seen=datetime.now(UTC) - timedelta(seconds=4))
    assert (await sweep_zombies({"redis": redis}))["zombies"] == 1
    agent = await Agent.get(id="worker@a:1")
    assert agent.status == AgentStatus.ZOMBIE and agent.zombie_at is not None
    assert (await sweep_zombies({"redis": redis}))["zombies"] == 0  # declared once


async def test_a_cleanly_stopped_agent_is_never_a_zombie(db, redis):
    await _agent("worker@gone:1", silent_s=3600, status=AgentStatus.STOPPED)
    assert (await sweep_zombies({"redis": redis}))["zombies"] == 0
    assert (await Agent.get(id="worker@gone:1")).status == AgentStatus.STOPPED


async def test_sweep_hands_back_a_zombies_running_deliveries_exactly_once(
        db, redis, receiver, run_worker):
    receiver.script("/hook", Reply(200, "ok"))
    dead = await _held_by("worker@dead:1", receiver.url("/hook"), redis)
    alive = await _held_by("worker@alive:2", receiver.url("/alive"), redis)
    await _agent("worker@dead:1", silent_s=60)
    await _agent("worker@alive:2", silent_s=0)
    pubsub = redis.pubsub()
    await pubsub.subscribe(get_settings().events_channel)

    first, second = await asyncio.gather(sweep_zombies({"redis": redis}),
                                         sweep_zombies({"redis": redis}))

    assert first["recovered"] + second["recovered"] == 1  # two sweeps at once: one recovery
    assert first["zombies"] + second["zombies"] == 1
    held = await Delivery.get(id=dead)
    assert (held.status, held.attempts, held.claimed_by) == (DeliveryStatus.RETRYING, 1, None)
    assert [a.error_class for a in await Attempt.filter(delivery_id=dead)] == ["worker_lost"]
    assert (await Delivery.get(id=alive)).status == DeliveryStatus.RUNNING  # a live one's: kept
    entry = await AuditLog.get(action="agent.zombie")  # declared a zombie once
    assert (entry.actor, entry.target_id) == ("system", "worker@dead:1")
    # the recovery is on record exactly once, on the sweep that made it: the one that declared
    # the zombie, or (sweeps racing) the other one, as `agent.deliveries_recovered`
    rows = await AuditLog.filter(target_id="worker@dead:1")
    assert sum(r.details["recovered_deliveries"] for r in rows) == 1
    assert {r.actor for r in rows} == {"system"}
    zombie_event = {"type": "agent.zombie", "id": "worker@dead:1", "recovered": 1}
    events: list[dict] = []
    for _ in range(20):
        if zombie_event in events:
            break
        if message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1):
            events.append(json.loads(message["data"]))
    await pubsub.aclose()
    assert zombie_event in events
    assert (await sweep_zombies({"redis": redis}))["recovered"] == 0  # a later sweep: nothing

    await Delivery.filter(id=alive).update(status=DeliveryStatus.SUCCEEDED)  # not our subject
    await run_worker()  # the retry the sweep enqueued: delivered, once
    delivery = await Delivery.get(id=dead)
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.SUCCEEDED, 2)
    assert len(receiver.hits("/hook")) == 1  # the killed worker never posted it
    assert not await DeadLetter.exists()


async def test_a_zombies_delivery_on_its_last_try_is_dead_lettered_once(db, redis, receiver):
    delivery_id = await _held_by("worker@dead:1", receiver.url("/hook"), redis, retries=0)
    await _agent("worker@dead:1", silent_s=60)
    await asyncio.gather(*(sweep_zombies({"redis": redis}) for _ in range(3)))
    entry = await DeadLetter.get(delivery_id=delivery_id)
    assert entry.error_history[-1]["error"] == "worker_lost"
    assert await DeadLetter.filter(delivery_id=delivery_id).count() == 1
    assert (await Delivery.get(id=delivery_id)).status == DeliveryStatus.FAILED


async def test_sweep_forgets_long_gone_agents(db, redis, monkeypatch):
    monkeypatch.setenv("HEARTBEAT_FORGET_AFTER", "600")
    await _agent("worker@old:1", silent_s=3600, status=AgentStatus.STOPPED)
    await _agent("worker@recent:2", silent_s=60, status=AgentStatus.STOPPED)
    assert (await sweep_zombies({"redis": redis}))["forgotten"] == 1
    assert await Agent.all().values_list("id", flat=True) == ["worker@recent:2"]


# --- scaling: the decision -------------------------------------------------------------------

CONFIG = ScalingConfig(up_queue_depth=100, up_oldest_age_s=30, down_idle_s=60, min_workers=1,
                       max_workers=8, persist=3, cooldown_s=300)
DEEP = Signals(queue_depth=500, oldest_age_s=10, workers=2)
CALM = Signals(queue_depth=20, oldest_age_s=1, workers=2)
IDLE = Signals(queue_depth=0, oldest_age_s=0, workers=3)


def _run(series: list[Signals], step_s: float = 30, config: ScalingConfig = CONFIG):
    """Evaluate a series of figures `step_s` apart, remembering events like the DB does."""
    streak, last, events = Streak(), {}, []
    for i, signals in enumerate(series):
        now = i * step_s
        outcome = decide(signals, streak, config, now, last)
        streak = outcome.streak
        if outcome.decision:
            last[outcome.decision.direction] = now
            events.append((now, outcome.decision))
    return events


def test_a_flapping_queue_makes_no_event():
    assert _run([DEEP, CALM] * 20) == []


def test_a_deep_queue_scales_up_once_per_cool_down_even_with_dips():
    series = ([DEEP] * 3 + [CALM] + [DEEP] * 4) * 2  # 16 evaluations over 4 minutes
    events = _run(series, step_s=15)
    assert len(events) == 1
    at, decision = events[0]
    assert (at, decision.direction) == (30, SCALE_UP)  # the third deep evaluation in a row
    assert decision.suggested_workers == 8  # 5x the threshold: 10 workers, capped at 8
    assert "queue depth 500 >= 100" in decision.reason
    later = _run(series + [DEEP] * 10, step_s=15)  # still deep past the 300 s cool-down
    assert [e[0] for e in later] == [30, 330]


def test_old_waiting_job_scales_up_and_an_idle_queue_scales_down_after_its_idle_time():
    [(_, up)] = _run([Signals(queue_depth=3, oldest_age_s=90, workers=1)] * 3)
    assert (up.direction, up.suggested_workers) == (SCALE_UP, 3)
    assert "oldest waiting 90 s >= 30 s" in up.reason
    events = _run([IDLE] * 4, step_s=15)  # 3 in a row but only 45 s idle: not yet
    assert events == []
    [(at, down)] = _run([IDLE] * 6, step_s=15)
    assert (at, down.direction, down.suggested_workers) == (60, SCALE_DOWN, 2)
    assert _run([Signals(0, 0, workers=1)] * 10) == []  # already at the minimum


def test_no_worker_with_work_waiting_scales_up():
    [(_, up)] = _run([Signals(queue_depth=1, oldest_age_s=0, workers=0)] * 3)
    assert up.suggested_workers == 1 and "no live worker" in up.reason


def test_bad_thresholds_name_the_variable(monkeypatch):
    monkeypatch.setenv("SCALE_UP_QUEUE_DEPTH", "lots")
    with pytest.raises(ValueError, match="SCALE_UP_QUEUE_DEPTH: must be an integer >= 1"):
        ScalingConfig.from_env()
    monkeypatch.setenv("SCALE_UP_QUEUE_DEPTH", "10")
    monkeypatch.setenv("SCALE_MIN_WORKERS", "5")
    monkeypatch.setenv("SCALE_MAX_WORKERS", "2")
    with pytest.raises(ValueError, match="SCALE_MAX_WORKERS: must be >= SCALE_MIN_WORKERS"):
        ScalingConfig.from_env()


# --- scaling: against the database, Redis and the hooks ---------------------------------------

@pytest.fixture
def thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"SCALE_UP_QUEUE_DEPTH": "3", "SCALE_UP_OLDEST_AGE_S": "3600",
                        "SCALE_PERSIST_EVALUATIONS": "2", "SCALE_COOLDOWN_S": "300",
                        "SCALE_MAX_WORKERS": "4"}.items():
        monkeypatch.setenv(name, value)


async def _backlog(redis, receiver, n: int) -> None:
    endpoint = await make_endpoint(receiver.url("/hook"))
    for i in range(n):
        await publish_message(endpoint.app_id, "order.created", {"n": i}, redis=redis)


async def test_evaluations_of_a_deep_queue_record_one_scaling_event(db, redis, receiver,
                                                                    thresholds):
    from jobs.queue import queue_name

    await _agent("worker@a:1", silent_s=0, queue=queue_name())
    await _agent("worker@other-lane:2", silent_s=0, queue="elsewhere")  # not counted
    await _backlog(redis, receiver, 5)
    results = []
    for i in range(6):  # every 30 s, the worker beating meanwhile
        now = datetime.now(UTC) + timedelta(seconds=30 * i)
        await Agent.all().update(last_seen=now)
        results.append(await evaluate_scaling({"redis": redis}, now=now))
    assert [r["note"] for r in results[:2]] == ["scale_up signal 1/2", "event"]
    assert all(r["note"].startswith("cool-down") or r["note"].endswith("1/2")
               for r in results[2:]), results
    event = await ScalingEvent.get()
    assert (event.direction, event.queue_depth, event.workers, event.suggested_workers) == (
        "scale_up", 5, 1, 2)
    assert results[1]["event"]["id"] == event.id and event.hooks == {}


async def test_each_event_runs_the_command_and_posts_the_webhook(db, redis, receiver,
                                                                 thresholds, monkeypatch,
                                                                 tmp_path):
    out = tmp_path / "event.json"
    script = (f"import json, os, sys; data = json.load(sys.stdin); "
              f"data['env'] = os.environ['OBSERVATORY_SCALING_SUGGESTED_WORKERS']; "
              f"open({str(out)!r}, 'w').write(json.dumps(data))")
    monkeypatch.setenv("OBSERVATORY_SCALING_COMMAND", f"{sys.executable} -c \"{script}\"")
    monkeypatch.setenv("OBSERVATORY_SCALING_WEBHOOK", receiver.url("/autoscaler"))
    receiver.script("/autoscaler", Reply(204, ""))
    await _backlog(redis, receiver, 4)
    for i in range(2):
        await evaluate_scaling({"redis": redis}, now=datetime.now(UTC) + timedelta(seconds=i))

    event = await ScalingEvent.get()
    assert event.hooks["command"]["ok"] and event.hooks["command"]["exit_code"] == 0
    assert event.hooks["webhook"] == {"ok": True, "status_code": 204}
    ran = json.loads(out.read_text())
    assert (ran["id"], ran["direction"], ran["workers"], ran["env"]) == (
        event.id, "scale_up", 0, "2")  # 4 waiting for 3 per worker: 2
    [hit] = receiver.hits("/autoscaler")
    posted = json.loads(hit.body)
    assert posted["type"] == "scaling.event" and posted["data"]["id"] == event.id


async def test_a_hanging_command_is_killed_and_reported(tmp_path):
    result = await run_command(f"{sys.executable} -c 'import time; time.sleep(30)'", {"id": 1},
                               timeout_s=0.5)
    assert result == {"ok": False, "error": "timed out after 0.5 s (killed)"}
    missing = await run_command("/nonexistent/autoscale", {"id": 1}, timeout_s=1)
    assert missing["ok"] is False and "FileNotFoundError" in missing["error"]


async def test_a_refused_webhook_destination_is_reported_not_raised(db, redis, receiver,
                                                                    thresholds, monkeypatch):
    monkeypatch.setenv("OBSERVATORY_DESTINATION_ALLOWLIST", "")  # 127.0.0.1 is guarded now
    monkeypatch.setenv("OBSERVATORY_SCALING_WEBHOOK", receiver.url("/autoscaler"))
    await _backlog(redis, receiver, 4)
    for i in range(2):
        await evaluate_scaling({"redis": redis}, now=datetime.now(UTC) + timedelta(seconds=i))
    event = await ScalingEvent.get()
    assert event.hooks["webhook"]["ok"] is False
    assert not receiver.hits("/autoscaler")
