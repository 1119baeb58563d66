"""Live updates: Redis pub/sub events -> refreshed Reflex state of every open dashboard.

One relay runs per backend process (the `live_relay` lifespan task, see dashboard/dashboard.py):

    Redis `{namespace}:events` --listen--> EventRelay (collects event types)
        --at most every 250 ms--> push_panels(app, panels)
            fetch the touched panels ONCE, then for each socket connected to this process:
            app.modify_state(token) -> apply_panels -> Reflex emits the delta to that tab

A burst of 10,000 events becomes a handful of refreshes, each one query per touched panel
whatever the number of tabs. The browser never polls. `EventRelay` knows nothing of Reflex,
so it is tested with a plain callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import reflex as rx
from redis.asyncio import Redis

from dashboard.state.panels import Panel, fetch_panels, panels_for_events
from dashboard.state.scheduler import SchedulerState, apply_panels
from models.config import get_settings

logger = logging.getLogger(__name__)

Refresh = Callable[[frozenset[str]], Awaitable[None]]

# An event type the relay makes up: "something may have been missed, refresh everything".
RESYNC = "relay.resync"


class EventRelay:
    """Subscribe to a pub/sub channel and call `refresh(event_types)` coalesced.

    The first event after a quiet period is applied at once; events arriving while a refresh
    runs or during the following `interval` are merged into the next call. `tick` (if set)
    adds `tick_event` at least that often, whatever else flows, for state that changes with
    time alone (a worker that stops sending heartbeats becomes a zombie).
    """

    def __init__(self, redis: Redis, channel: str, refresh: Refresh, *,
                 interval: float = 0.25, tick: float | None = None,
                 tick_event: str = "agent.heartbeat",
                 reconnect_delay: float = 1.0, max_reconnect_delay: float = 15.0) -> None:
        self.redis = redis
        self.channel = channel
        self.refresh = refresh
        self.interval = interval
        self.tick = tick
        self.tick_event = tick_event
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.received = 0  # events read from the channel
        self.refreshes = 0  # calls made to `refresh`
        self.subscribed = asyncio.Event()
        self._pending: set[str] = set()
        self._wake = asyncio.Event()

    def notify(self, event_type: str) -> None:
        """Queue one event type for the next refresh (called for every message)."""
        self._pending.add(event_type)
        self._wake.set()

    async def run(self) -> None:
        """Listen and refresh until cancelled; reconnects after Redis errors."""
        flusher = asyncio.create_task(self._flush_loop(), name="observatory-relay-flush")
        try:
            await self._listen_forever()
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)

    async def _listen_forever(self) -> None:
        delay = self.reconnect_delay
        first = True
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self.subscribed.set()
                    if not first:
                        self.notify(RESYNC)  # events published while we were away are lost
                    first, delay = False, self.reconnect_delay
                    await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # redis down, connection reset, ...
                self.subscribed.clear()
                logger.warning("Live relay lost Redis (%s: %s); reconnecting in %.0f s",
                               type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_reconnect_delay)

    async def _read(self, pubsub: Any) -> None:
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            self.received += 1
            self.notify(_event_type(message.get("data")))

    async def _flush_loop(self) -> None:
        last_tick = time.monotonic()
        while True:
            timeout = (None if self.tick is None
                       else max(0.0, last_tick + self.tick - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if self.tick is not None and time.monotonic() - last_tick >= self.tick:
                self._pending.add(self.tick_event)  # due even while other events flow
            types, self._pending = frozenset(self._pending), set()
            if not types:
                continue
            if self.tick_event in types:
                last_tick = time.monotonic()
            started = time.monotonic()
            try:
                self.refreshes += 1
                await self.refresh(types)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Live relay refresh failed for %s", sorted(types))
            # Coalesce: whatever arrives from now until `interval` after this refresh started
            # is applied together in the next one.
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))


def _event_type(data: Any) -> str:
    """The `type` of a JSON event; RESYNC for anything unreadable (refresh everything)."""
    try:
        event = json.loads(data)
    except (TypeError, ValueError):
        return RESYNC
    return str(event.get("type", RESYNC)) if isinstance(event, dict) else RESYNC


def local_tokens(app: rx.App) -> list[str]:
    """Client tokens whose socket is connected to THIS process.

    With Redis state (several workers) the token manager also caches records of sockets
    owned by other workers; their own relay updates those.
    """
    namespace = app.event_namespace
    if namespace is None:
        return []
    manager = getattr(namespace, "_token_manager", None)
    records = getattr(manager, "token_to_socket", None)
    instance_id = getattr(manager, "instance_id", None)
    if records is not None and instance_id is not None:
        return [token for token, record in list(records.items())
                if getattr(record, "instance_id", instance_id) == instance_id]
    return list(namespace.token_to_sid)


async def push_panels(app: rx.App, panels: Iterable[Panel]) -> int:
    """Load `panels` once and push them to every Scheduler tab on this process.

    Returns:
        The number of sessions updated.
    """
    tokens = local_tokens(app)
    if not tokens:
        return 0
    data = await fetch_panels(panels)

    async def push(token: str) -> bool:
        async with app.modify_state(rx.BaseStateToken(ident=token, cls=SchedulerState)) as st:
            scheduler = await st.get_state(SchedulerState)
            if not scheduler._wants_push():
                return False
            await apply_panels(scheduler, data)
            return True

    results = await asyncio.gather(*(push(token) for token in tokens), return_exceptions=True)
    for token, result in zip(tokens, results, strict=True):
        if isinstance(result, BaseException):
            logger.warning("Live relay could not update session %s: %r", token[:8], result)
    return sum(1 for result in results if result is True)


async def run_relay(app: rx.App, redis: Redis, *, interval: float = 0.25,
                    tick: float = 5.0) -> None:
    """Relay the Observatory event channel to this process's dashboards until cancelled."""

    async def refresh(types: frozenset[str]) -> None:
        await push_panels(app, panels_for_events(types))  # RESYNC is unknown: all panels

    relay = EventRelay(redis, get_settings().events_channel, refresh,
                       interval=interval, tick=tick)
    logger.info("Live relay listening on %s", relay.channel)
    await relay.run()


@contextlib.asynccontextmanager
async def live_relay(app: rx.App) -> AsyncIterator[None]:
    """Lifespan task: run the relay while the app serves, on its own Redis connection.

    Register it after the database task: lifespan contexts exit in reverse order, so the
    relay stops before the database closes.
    """
    url = get_settings().redis_url
    if not url:
        logger.error("Live updates are off: REDIS_URL is not set")
        yield
        return
    redis = Redis.from_url(url)
    task = asyncio.create_task(run_relay(app, redis), name="observatory-live-relay")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()
