"""State of the Heartbeat Monitor panel: workers and agents, zombies flagged."""

from __future__ import annotations

import reflex as rx

from dashboard.state.rows import AgentItem


class HeartbeatState(rx.State):
    agents: list[AgentItem] = []
    loaded: bool = False

    @rx.var
    def alive_count(self) -> int:
        return sum(1 for agent in self.agents if agent["status"] == "alive")

    @rx.var
    def zombie_count(self) -> int:
        return sum(1 for agent in self.agents if agent["status"] == "zombie")

    def _apply(self, agents: list[AgentItem]) -> None:
        if not self.loaded or agents != self.agents:
            self.agents = agents
        if not self.loaded:
            self.loaded = True
