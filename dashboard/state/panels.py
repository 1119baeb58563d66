"""The Scheduler page's data contract: which panels an event touches, and loading them once.

One fetch serves every open dashboard of a backend process: the relay loads the rows once per
coalesced burst and hands the same `PanelData` to each session (see dashboard/relay.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypedDict

from dashboard import runtime
from dashboard.state.rows import (AgentItem, CronRunItem, DeadLetterItem, agent_item,
                                  cron_run_item, dead_letter_item)
from dashboard.state.bulk import OperationItem, load_operations
from models import queries

logger = logging.getLogger(__name__)


class Panel(StrEnum):
    CRON = "cron"
    DEAD_LETTERS = "dead_letters"
    HEARTBEATS = "heartbeats"
    OPERATIONS = "operations"  # bulk operations (Retry All) and their progress


ALL_PANELS: frozenset[Panel] = frozenset(Panel)

# Event type (jobs/events.py) -> the panels it can change. Unknown types refresh everything.
_PANELS_BY_EVENT: dict[str, frozenset[Panel]] = {
    # ...and the "new failures since it was confirmed" of a bulk operation in progress
    "dlq.changed": frozenset({Panel.DEAD_LETTERS, Panel.OPERATIONS}),
    "bulk.progress": frozenset({Panel.OPERATIONS}),
    # a delivery that fails for good adds a DLQ entry; a retry's outcome resolves one
    "delivery.updated": frozenset({Panel.DEAD_LETTERS}),
    "cron.changed": frozenset({Panel.CRON}),
    "agent.heartbeat": frozenset({Panel.HEARTBEATS}),
    # a zombie's deliveries are handed back (some may reach the DLQ)
    "agent.zombie": frozenset({Panel.HEARTBEATS, Panel.DEAD_LETTERS}),
    "scaling.event": frozenset({Panel.HEARTBEATS}),
}


class PanelData(TypedDict, total=False):
    """Rows of the panels that were loaded; a panel left out was not refreshed."""

    dead_letters: list[DeadLetterItem]
    cron_upcoming: list[CronRunItem]
    cron_recent: list[CronRunItem]
    agents: list[AgentItem]
    scaling_events: list[queries.ScalingEventRow]
    operations: list[OperationItem]
    refreshed_at: str  # ISO time of the load
    errors: dict[str, str]  # panel -> message, for the panels that failed to load
    attempted: list[str]  # the panels this load tried (their old errors are replaced)


def panels_for_events(types: Iterable[str]) -> frozenset[Panel]:
    """The panels to refresh for a burst of event types (all of them for an unknown type)."""
    panels: set[Panel] = set()
    for type_ in types:
        touched = _PANELS_BY_EVENT.get(type_)
        if touched is None:
            return ALL_PANELS
        panels |= touched
    return frozenset(panels)


async def _load_dead_letters(data: PanelData) -> None:
    data["dead_letters"] = [dead_letter_item(r) for r in await queries.list_dead_letters()]


async def _load_cron(data: PanelData) -> None:
    runs = [cron_run_item(r) for r in await queries.list_cron_runs()]
    data["cron_upcoming"] = [r for r in runs if r["id"] is None]
    data["cron_recent"] = [r for r in runs if r["id"] is not None]


async def _load_heartbeats(data: PanelData) -> None:
    data["agents"] = [agent_item(r) for r in await queries.list_agents()]
    data["scaling_events"] = await queries.list_scaling_events()


async def _load_operations(data: PanelData) -> None:
    data["operations"] = await load_operations()


_LOADERS: dict[Panel, Callable[[PanelData], Awaitable[None]]] = {
    Panel.DEAD_LETTERS: _load_dead_letters,
    Panel.CRON: _load_cron,
    Panel.HEARTBEATS: _load_heartbeats,
    Panel.OPERATIONS: _load_operations,
}


async def fetch_panels(panels: Iterable[Panel] = ALL_PANELS) -> PanelData:
    """Load the rows of `panels` through models.queries (plain rows, never ORM objects).

    Each panel loads on its own: one that fails is reported in `errors` (the page shows an
    error state in that panel only) while the others load as usual.
    """
    wanted = frozenset(panels)
    data = PanelData(refreshed_at=datetime.now(UTC).isoformat(), errors={},
                     attempted=[panel.value for panel in wanted])
    try:
        await runtime.ensure_db()
    except Exception as exc:  # noqa: BLE001 - every panel shows it
        data["errors"] = {panel.value: _failure(exc) for panel in wanted}
        return data
    for panel in sorted(wanted):
        try:
            await _LOADERS[panel](data)
        except Exception as exc:  # noqa: BLE001 - shown in that panel, logged once here
            logger.exception("loading the %s panel failed", panel.value)
            data["errors"][panel.value] = _failure(exc)
    return data


def _failure(exc: Exception) -> str:
    return f"Could not load this panel ({type(exc).__name__}); it retries on the next update."
