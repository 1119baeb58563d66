"""State of the Heartbeat Monitor panel: workers and agents (zombies first) and the recent
scaling events.

"Last seen 4 s ago" is a relative label computed on the server at each refresh: the relay
pushes on every `agent.heartbeat` and ticks every few seconds without one (dashboard/relay.py
`tick`), so the label moves, and a silent worker turns zombie on screen, with no beat at all.
"""

from __future__ import annotations

import reflex as rx

from dashboard.state.rows import AgentItem, clock_label, humanize
from models.queries import ScalingEventRow


class AgentView(AgentItem):
    running_label: str  # "3 running"
    totals_label: str  # "12 jobs · 580 ok · 3 failed"
    queue_label: str  # the queue it serves (or its kind for external agents)


class ScalingEventItem(ScalingEventRow):
    when_label: str
    direction_label: str  # "Scale up" / "Scale down"
    figures_label: str  # "2 → 4 workers · 1200 waiting · oldest 75 s"
    hooks_label: str  # "command ok · webhook failed"; "" without hooks


def agent_view(item: AgentItem) -> AgentView:
    totals: dict[str, int] = item.get("totals") or {}
    return AgentView(
        **item, running_label=f"{item.get('running', 0)} running",
        totals_label=(f"{totals.get('jobs', 0)} jobs · {totals.get('succeeded', 0)} ok · "
                      f"{totals.get('failed', 0)} failed"),
        queue_label=item.get("queue") or item["kind"])


def scaling_event_item(row: ScalingEventRow) -> ScalingEventItem:
    hooks = row.get("hooks") or {}
    return ScalingEventItem(
        **row, when_label=clock_label(row["created_at"]),
        direction_label=humanize(row["direction"]),
        figures_label=(f"{row['workers']} → {row['suggested_workers']} workers · "
                       f"{row['queue_depth']} waiting · oldest {row['oldest_age_s']:g} s"),
        hooks_label=" · ".join(f"{name} {'ok' if result.get('ok') else 'failed'}"
                               for name, result in sorted(hooks.items())))


class HeartbeatState(rx.State):
    agents: list[AgentView] = []
    scaling_events: list[ScalingEventItem] = []
    loaded: bool = False

    @rx.var
    def alive_count(self) -> int:
        return sum(1 for agent in self.agents if agent["status"] == "alive")

    @rx.var
    def zombie_count(self) -> int:
        return sum(1 for agent in self.agents if agent["status"] == "zombie")

    def _apply(self, agents: list[AgentItem],
               scaling_events: list[ScalingEventRow] | None = None) -> None:
        """Store a refresh (rows from dashboard.state.panels); zombies stay first as listed
        by models.queries.list_agents. Events are left as they are when not loaded."""
        views = [agent_view(a) for a in agents]
        if not self.loaded or views != self.agents:
            self.agents = views
        if scaling_events is not None:
            items = [scaling_event_item(e) for e in scaling_events]
            if items != self.scaling_events:
                self.scaling_events = items
        if not self.loaded:
            self.loaded = True
