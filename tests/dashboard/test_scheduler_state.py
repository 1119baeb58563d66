"""Scheduler state: page load, Retry from the DLQ panel (accepted and refused), panel loads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
import reflex as rx

from dashboard import runtime
from dashboard.components.dead_letters import dead_letter_row
from dashboard.state.cron import CronState
from dashboard.state.dead_letters import RETRY_FAILED, DeadLetterState
from dashboard.state.heartbeats import HeartbeatState
from dashboard.state.panels import Panel, panels_for_events
from dashboard.state.scheduler import SchedulerState, apply_panels
from jobs.queue import queue_name
from models.agents import Agent
from models.audit import AuditLog
from models.cron import CronJob, CronRun
from models.dead_letters import DeadLetter
from models.deliveries import Delivery, Message
from models.endpoints import Application, Endpoint
from models.enums import AgentStatus, CronRunStatus, DeadLetterStatus, DeliveryStatus
from tests.dashboard.sessions import actor_of, signed_in


@pytest_asyncio.fixture
async def backend(db: str, redis: Any) -> AsyncIterator[Any]:
    """Real DB and Redis; closes the dashboard's own Redis pool (runtime.get_redis) after."""
    yield redis
    await runtime.close()


async def make_dead_letter(url: str = "http://127.0.0.1:9/hook") -> DeadLetter:
    """Application -> Endpoint -> Message -> failed Delivery -> active DeadLetter."""
    app = await Application.create(name=f"shop-{datetime.now(UTC).timestamp()}")
    endpoint = await Endpoint.create(app=app, url=url, secret="whsec_dGVzdHNlY3JldHRlc3Q=")
    message = await Message.create(app=app, event_type="order.paid",
                                   payload={"order": 42, "amount": "19.90"})
    delivery = await Delivery.create(message=message, endpoint=endpoint,
                                     status=DeliveryStatus.FAILED, attempts=3,
                                     last_error="HTTP 503")
    return await DeadLetter.create(delivery=delivery, message=message, endpoint=endpoint,
                                   endpoint_url=url, failure_reason="max_attempts_exceeded",
                                   attempts=3)


async def session_states() -> tuple[rx.State, DeadLetterState]:
    """A fresh session's root state, loaded the way the page load does it, and its DLQ state."""
    root = await signed_in()
    await (await root.get_state(SchedulerState)).load()
    root._clean()
    return root, await root.get_state(DeadLetterState)


async def panel_delta(root: rx.State, state_cls: type[rx.State]) -> dict[str, Any]:
    """What the next push would send for one panel: {field: value}, suffixes stripped."""
    delta = await root._get_resolved_delta()
    fields = delta.get(state_cls.get_full_name(), {})
    return {key.removesuffix("_rx_state_"): value for key, value in fields.items()}


async def run_handler(handler: Any) -> list[Any]:
    """Drive a (generator) event handler to the end; returns what it yielded."""
    return [item async for item in handler]


def entry_of(state: DeadLetterState, entry_id: int) -> dict[str, Any]:
    [entry] = [dict(e) for e in state.entries if e["id"] == entry_id]
    return entry


async def test_retry_dlq_entry_moves_entry_to_pending_and_renders_queued(backend):
    dead = await make_dead_letter()
    root, dlq = await session_states()
    assert entry_of(dlq, dead.id)["status"] == "active"

    handler = dlq.retry_dlq_entry(dead.id)
    await anext(handler)  # first yield: the button is busy before the round trip
    assert (await panel_delta(root, DeadLetterState))["in_flight"] == [dead.id]
    root._clean()
    rest = [item async for item in handler]

    # state: pending at once, button released, a success toast
    entry = entry_of(dlq, dead.id)
    assert entry["status"] == "retrying"
    assert dlq.in_flight == []
    assert dlq.queued_count == 1 and dlq.failed_count == 0
    pushed = await panel_delta(root, DeadLetterState)
    assert [e["status"] for e in pushed["entries"] if e["id"] == dead.id] == ["retrying"]
    assert pushed["in_flight"] == [] and pushed["queued_count"] == 1
    assert any("Retry queued" in str(item) for item in rest)

    # database: the entry is retrying, a new delivery is queued in arq, audited as the actor
    assert (await DeadLetter.get(id=dead.id)).status == DeadLetterStatus.RETRYING
    new = await Delivery.get(retry_of_id=dead.delivery_id)  # type: ignore[attr-defined]
    assert new.status == DeliveryStatus.QUEUED
    assert await backend.zcard(queue_name()) == 1
    [audit] = await AuditLog.filter(action="dlq.retry")
    assert audit.actor == actor_of("admin")

    # rendered: the entry's row shows the pending "Queued" badge and no "Failed" one
    html = str(dead_letter_row(entry, busy=False, on_retry=dlq.__class__.retry_dlq_entry(dead.id)))
    assert '"Queued"' in html and '"Failed"' not in html
    assert f'"aria-label":"Retry delivery {dead.id}"' in html
    assert "disabled:true" in html  # a queued entry cannot be retried again


async def test_refused_retry_keeps_entry_failed_and_toasts_the_reason(backend):
    dead = await make_dead_letter()
    _, dlq = await session_states()
    await Endpoint.filter(id=dead.endpoint_id).delete()  # type: ignore[attr-defined]

    items = await run_handler(dlq.retry_dlq_entry(dead.id))

    toasts = [str(item) for item in items if item is not None]
    assert len(toasts) == 1
    assert RETRY_FAILED in toasts[0] and '"error"' in toasts[0]
    assert "original configuration could not be found" in toasts[0]
    assert entry_of(dlq, dead.id)["status"] == "active"
    assert dlq.in_flight == []
    assert (await DeadLetter.get(id=dead.id)).status == DeadLetterStatus.ACTIVE
    html = str(dead_letter_row(entry_of(dlq, dead.id), busy=False))
    assert '"Failed"' in html and '"Queued"' not in html
    assert "disabled:false" in html


async def test_second_retry_of_a_queued_entry_is_refused(backend):
    dead = await make_dead_letter()
    _, first = await session_states()
    _, other_tab = await session_states()  # loaded before the first retry
    await run_handler(first.retry_dlq_entry(dead.id))

    items = await run_handler(other_tab.retry_dlq_entry(dead.id))

    assert any(RETRY_FAILED in str(i) and "already in flight" in str(i) for i in items)
    # the refusal reloads the panel: the other tab now shows the truth, "Queued"
    assert entry_of(other_tab, dead.id)["status"] == "retrying"
    assert await Delivery.filter(retry_of_id=dead.delivery_id).count() == 1  # type: ignore[attr-defined]


async def test_page_load_fills_every_panel_from_the_database(backend):
    await make_dead_letter()
    job = await CronJob.create(name="reconcile", expression="*/5 * * * *")
    now = datetime.now(UTC)
    await CronRun.create(job=job, status=CronRunStatus.FAILED, scheduled_at=now,
                         started_at=now, finished_at=now, duration_ms=12.0, error="boom")
    await Agent.create(id="worker@a:1", host="a", pid=1, status=AgentStatus.ALIVE,
                       last_seen=now)
    await Agent.create(id="worker@b:2", host="b", pid=2, status=AgentStatus.ALIVE,
                       last_seen=now - timedelta(minutes=5))

    root = await signed_in()
    await (await root.get_state(SchedulerState)).load()

    cron = await root.get_state(CronState)
    assert [r["status"] for r in cron.upcoming] == ["pending"]
    assert [(r["status"], r["error_label"]) for r in cron.recent] == [("failed", "boom")]
    beats = await root.get_state(HeartbeatState)
    assert {a["id"]: a["status"] for a in beats.agents} == {
        "worker@a:1": "alive", "worker@b:2": "zombie"}
    assert (beats.alive_count, beats.zombie_count) == (1, 1)
    dlq = await root.get_state(DeadLetterState)
    assert dlq.failed_count == 1
    assert (dlq.entries[0]["attempts_label"], dlq.entries[0]["reason_label"]) == (
        "3 attempts", "Max attempts exceeded")
    assert (await root.get_state(SchedulerState)).refreshed_at != ""


async def test_unchanged_reload_pushes_nothing(backend):
    await make_dead_letter()
    root, _ = await session_states()
    await (await root.get_state(SchedulerState)).load()
    assert await panel_delta(root, DeadLetterState) == {}
    assert await panel_delta(root, CronState) == {}
    assert await panel_delta(root, HeartbeatState) == {}


@pytest.mark.parametrize(("types", "panels"), [
    ({"dlq.changed"}, {Panel.DEAD_LETTERS, Panel.OPERATIONS}),
    ({"bulk.progress"}, {Panel.OPERATIONS}),
    ({"delivery.updated", "cron.changed"}, {Panel.DEAD_LETTERS, Panel.CRON}),
    ({"agent.heartbeat"}, {Panel.HEARTBEATS}),
    ({"agent.heartbeat", "something.new"}, set(Panel)),
])
def test_events_refresh_only_the_panels_they_touch(types, panels):
    assert panels_for_events(types) == panels


@pytest.mark.parametrize(("route_id", "pushed"), [
    ("/index", True),  # what Reflex records for "/"
    ("/scheduler", True),
    ("/scheduler/", True),
    ("", True),  # no event yet: nothing says it left the page
    ("/deliveries", False),
    ("/404", False),
])
def test_only_sessions_on_the_scheduler_page_get_pushes(route_id, pushed):
    scheduler = SchedulerState()
    scheduler._watching = True
    scheduler.rx_router_route_id = route_id
    assert scheduler._wants_push() is pushed


def test_sessions_that_never_opened_the_scheduler_get_no_pushes():
    assert SchedulerState()._wants_push() is False


async def test_a_panel_that_cannot_load_shows_its_error_and_the_others_still_load(backend):
    from tortoise import connections

    from dashboard.components.panel import guarded
    from dashboard.state.panels import fetch_panels

    dead = await make_dead_letter()
    conn = connections.get("default")
    await conn.execute_script("ALTER TABLE cron_run RENAME TO cron_run_gone")
    try:
        data = await fetch_panels()
    finally:
        await conn.execute_script("ALTER TABLE cron_run_gone RENAME TO cron_run")

    assert set(data["errors"]) == {"cron"} and "Could not load" in data["errors"]["cron"]
    assert [e["id"] for e in data["dead_letters"]] == [dead.id]  # the others loaded
    assert "agents" in data and "operations" in data
    root = await signed_in()
    scheduler = await root.get_state(SchedulerState)
    await apply_panels(scheduler, data)
    assert scheduler.panel_errors == {"cron": data["errors"]["cron"]}
    html = str(guarded("cron", data["errors"]["cron"], rx.text("rows"), "Cron Job Dashboard"))
    assert "Could not load this panel" in html

    await apply_panels(scheduler, await fetch_panels())  # the table is back: the error clears
    assert scheduler.panel_errors == {}
