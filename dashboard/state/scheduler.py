"""State of the Scheduler page: its one refresh contract, used by page load and the relay."""

from __future__ import annotations

import reflex as rx

from dashboard.routes import is_live_route
from dashboard.state.bulk import BulkRetryState
from dashboard.state.cron import CronState
from dashboard.state.dead_letters import DeadLetterState
from dashboard.state.heartbeats import HeartbeatState
from dashboard.state.panels import ALL_PANELS, PanelData, fetch_panels
from dashboard.state.rows import clock_label
from dashboard.state.session import signed_in


class SchedulerState(rx.State):
    """Page-level state; the panels live in their own states, reached through `get_state`."""

    refreshed_at: str = ""  # label of the last refresh, pushed or loaded
    panel_errors: dict[str, str] = {}  # panel -> message while that panel cannot load
    # set by the page load: only sessions that opened the Scheduler get pushes
    _watching: bool = False

    @rx.event
    async def load(self) -> None:
        """Page-load event: load every panel (nothing without a sign-in)."""
        if not await signed_in(self):
            return
        self._watching = True
        await apply_panels(self, await fetch_panels(ALL_PANELS))

    def _wants_push(self) -> bool:
        """Whether the relay should refresh this session (it shows the Scheduler now)."""
        route = self.router.route_id
        return self._watching and (not route or is_live_route(route))


async def apply_panels(state: rx.State, data: PanelData) -> None:
    """Store freshly loaded rows in the panel states of `state`'s session.

    Panels missing from `data` are left as they are. Works from any state of the session
    (an event handler's `self`, or the state the relay holds through `app.modify_state`).
    """
    if "dead_letters" in data:
        (await state.get_state(DeadLetterState))._apply(data["dead_letters"])
        await (await state.get_state(BulkRetryState)).note_entries()
    if "operations" in data:
        (await state.get_state(BulkRetryState))._apply(data["operations"])
    if "cron_upcoming" in data and "cron_recent" in data:
        (await state.get_state(CronState))._apply(data["cron_upcoming"], data["cron_recent"])
    if "agents" in data:
        (await state.get_state(HeartbeatState))._apply(data["agents"], data.get("scaling_events"))
    scheduler = await state.get_state(SchedulerState)
    scheduler.refreshed_at = clock_label(data.get("refreshed_at"))
    attempted = set(data.get("attempted", []))
    errors = {k: v for k, v in scheduler.panel_errors.items() if k not in attempted}
    errors.update(data.get("errors", {}))
    if errors != scheduler.panel_errors:
        scheduler.panel_errors = errors
