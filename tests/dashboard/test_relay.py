"""The live relay: Redis pub/sub events -> coalesced refreshes -> each Scheduler session."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest_asyncio
import reflex as rx

from dashboard import relay as relay_module
from dashboard import runtime
from dashboard.relay import RESYNC, EventRelay, local_tokens, push_panels
from dashboard.state.dead_letters import DeadLetterState
from dashboard.state.panels import ALL_PANELS, Panel, panels_for_events
from dashboard.state.scheduler import SchedulerState
from jobs.events import publish_event, publish_events
from models.config import get_settings
from tests.dashboard.sessions import actor_of, signed_in


class Recorder:
    """A refresh callback that records each call's event types (optionally slow)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[frozenset[str]] = []
        self.delay = delay
        self.changed = asyncio.Event()

    async def __call__(self, types: frozenset[str]) -> None:
        self.calls.append(types)
        self.changed.set()
        if self.delay:
            await asyncio.sleep(self.delay)

    async def wait_for(self, count: int, timeout: float = 2.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                self.changed.clear()
                await self.changed.wait()


@pytest_asyncio.fixture
async def start_relay(redis: Any) -> AsyncIterator[Any]:
    """start_relay(refresh, **options) -> a subscribed EventRelay running in a task."""
    tasks: list[asyncio.Task[None]] = []

    async def start(refresh: Any, **options: Any) -> EventRelay:
        relay = EventRelay(redis, get_settings().events_channel, refresh, **options)
        tasks.append(asyncio.create_task(relay.run()))
        async with asyncio.timeout(2):
            await relay.subscribed.wait()
        return relay

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_published_event_triggers_a_refresh_within_two_seconds(redis, start_relay):
    recorder = Recorder()
    await start_relay(recorder)

    started = time.monotonic()
    await publish_event(redis, "dlq.changed", id=7, status="retrying")
    await recorder.wait_for(1)

    assert time.monotonic() - started < 2.0
    assert recorder.calls == [frozenset({"dlq.changed"})]


async def test_burst_of_events_is_coalesced_into_few_refreshes(redis, start_relay):
    recorder = Recorder(delay=0.05)  # a refresh takes time, like a DB query plus pushes
    relay = await start_relay(recorder, interval=0.25)

    started = time.monotonic()
    for batch in range(10):  # 5,000 events over ~0.5 s
        await publish_events(redis, [{"type": "delivery.updated", "id": batch * 500 + i}
                                     for i in range(500)])
        await asyncio.sleep(0.05)
    await publish_event(redis, "cron.changed", name="reconcile")
    async with asyncio.timeout(5):
        while relay.received < 5001 or not any("cron.changed" in c for c in recorder.calls):
            await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started

    assert relay.received == 5001
    assert len(recorder.calls) <= elapsed / 0.25 + 2  # at most one per interval (+ edges)
    assert len(recorder.calls) <= 20  # for 5,001 events
    assert set().union(*recorder.calls) == {"delivery.updated", "cron.changed"}


async def test_refreshes_are_spaced_by_the_interval(redis, start_relay):
    stamps: list[float] = []

    async def refresh(types: frozenset[str]) -> None:
        stamps.append(time.monotonic())

    await start_relay(refresh, interval=0.2)
    for _ in range(12):
        await publish_event(redis, "agent.heartbeat", id="w1")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)

    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert 2 <= len(stamps) <= 5
    assert all(gap >= 0.19 for gap in gaps)


async def test_unreadable_event_refreshes_every_panel(redis, start_relay):
    recorder = Recorder()
    await start_relay(recorder)

    await redis.publish(get_settings().events_channel, b"not json")
    await recorder.wait_for(1)

    assert recorder.calls == [frozenset({RESYNC})]
    assert panels_for_events(recorder.calls[0]) == ALL_PANELS


async def test_quiet_channel_still_ticks_for_time_based_state(redis, start_relay):
    recorder = Recorder()
    await start_relay(recorder, tick=0.1)

    await recorder.wait_for(2, timeout=1.0)

    assert set(recorder.calls) == {frozenset({"agent.heartbeat"})}
    assert panels_for_events(recorder.calls[0]) == {Panel.HEARTBEATS}


async def test_tick_is_due_even_while_other_events_keep_flowing(redis, start_relay):
    recorder = Recorder()
    await start_relay(recorder, interval=0.05, tick=0.3)

    started = time.monotonic()
    for _ in range(20):  # 1 s of steady DLQ traffic, no heartbeat at all
        await publish_event(redis, "dlq.changed", id=1)
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started

    ticks = [c for c in recorder.calls if "agent.heartbeat" in c]
    assert 2 <= len(ticks) <= elapsed / 0.3 + 1


async def test_relay_resubscribes_and_resyncs_after_losing_redis(redis, start_relay):
    recorder = Recorder()
    relay = await start_relay(recorder, reconnect_delay=0.05)

    relay.subscribed.clear()
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    async with asyncio.timeout(3):
        await relay.subscribed.wait()
    await recorder.wait_for(1)
    assert recorder.calls[0] == frozenset({RESYNC})

    await publish_event(redis, "dlq.changed", id=1)
    await recorder.wait_for(2)
    assert "dlq.changed" in recorder.calls[-1]


# --- pushing to sessions -------------------------------------------------------------

class FakeApp:
    """The parts of rx.App the relay uses: connected tokens and `modify_state`."""

    def __init__(self, sessions: dict[str, rx.State]) -> None:
        self.sessions = sessions
        records = {t: SimpleNamespace(instance_id="me", sid=f"sid-{t}") for t in sessions}
        records["elsewhere"] = SimpleNamespace(instance_id="other-worker", sid="sid-x")
        manager = SimpleNamespace(token_to_socket=records, instance_id="me")
        self.event_namespace = SimpleNamespace(_token_manager=manager)
        self.modified: list[str] = []

    @contextlib.asynccontextmanager
    async def modify_state(self, token: Any) -> AsyncIterator[rx.State]:
        assert token.cls is SchedulerState
        self.modified.append(token.ident)
        yield self.sessions[token.ident]


async def test_push_updates_every_watching_session_with_one_fetch(db, monkeypatch):
    from tests.dashboard.test_scheduler_state import make_dead_letter

    watching, other = await signed_in(), await signed_in()
    await (await watching.get_state(SchedulerState)).load()  # opened the Scheduler
    app = FakeApp({"tab-1": watching, "tab-2": other})
    fetches: list[frozenset[Panel]] = []
    real_fetch = relay_module.fetch_panels

    async def counting_fetch(panels: Any) -> Any:
        fetches.append(frozenset(panels))
        return await real_fetch(panels)

    monkeypatch.setattr(relay_module, "fetch_panels", counting_fetch)
    assert sorted(local_tokens(app)) == ["tab-1", "tab-2"]  # not the other worker's socket
    dead = await make_dead_letter()

    updated = await push_panels(app, {Panel.DEAD_LETTERS})  # type: ignore[arg-type]

    assert updated == 1
    assert fetches == [frozenset({Panel.DEAD_LETTERS})]
    assert sorted(app.modified) == ["tab-1", "tab-2"]
    assert [e["id"] for e in (await watching.get_state(DeadLetterState)).entries] == [dead.id]
    assert (await other.get_state(DeadLetterState)).entries == []  # never opened the page
    await runtime.close()


async def test_live_relay_lifespan_pushes_published_changes_and_stops_cleanly(db, redis):
    from tests.dashboard.test_scheduler_state import make_dead_letter

    tab = await signed_in()
    await (await tab.get_state(SchedulerState)).load()
    app = FakeApp({"tab-1": tab})
    dlq = await tab.get_state(DeadLetterState)

    async with relay_module.live_relay(app):  # type: ignore[arg-type]
        async with asyncio.timeout(2):  # wait until it has subscribed
            while (await redis.pubsub_numsub(get_settings().events_channel))[0][1] < 1:
                await asyncio.sleep(0.02)
        dead = await make_dead_letter()
        await publish_event(redis, "dlq.changed", id=dead.id, status="active")
        async with asyncio.timeout(2):
            while not dlq.entries:
                await asyncio.sleep(0.02)
    assert [e["id"] for e in dlq.entries] == [dead.id]
    await runtime.close()
