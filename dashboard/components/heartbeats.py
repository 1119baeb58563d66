"""Heartbeat Monitor pieces: one row per worker, zombies flagged."""

from __future__ import annotations

from typing import Any

import reflex as rx

from dashboard.components.badges import agent_status_badge
from dashboard.components.panel import column_headers, empty_state, panel
from dashboard.components.reactive import each, either, is_empty

EMPTY_MESSAGE = "No workers have reported a heartbeat."


def agent_row(agent: Any) -> rx.Component:
    """One worker or agent (an AgentItem, or a Var of one)."""
    status = agent["status"]
    return rx.table.row(
        rx.table.row_header_cell(
            rx.vstack(
                rx.text(agent["id"], weight="medium", size="2", white_space="nowrap"),
                rx.text(f"{agent['kind']} · {agent['where_label']}", size="1",
                        color_scheme="gray", white_space="nowrap"),
                spacing="0",
            ),
        ),
        rx.table.cell(agent_status_badge(status)),
        rx.table.cell(
            rx.vstack(
                rx.text(agent["last_seen_label"], size="2", white_space="nowrap"),
                rx.text(agent["age_label"], size="1", color_scheme="gray"),
                spacing="0",
            ),
        ),
        class_name=f"agent-row agent-status-{status}",
        align="center",
    )


def heartbeat_table(agents: Any) -> rx.Component:
    return either(
        is_empty(agents),
        empty_state(EMPTY_MESSAGE, icon="heart-off"),
        rx.table.root(
            column_headers("Worker", "Status", "Last seen (UTC)"),
            rx.table.body(each(agents, agent_row)),
            variant="ghost",
            size="1",
            width="100%",
        ),
    )


def heartbeat_panel(agents: Any, alive_count: Any = 0, zombie_count: Any = 0) -> rx.Component:
    """The Heartbeat Monitor card (`id="heartbeat-monitor-panel"`)."""
    return panel(
        "Heartbeat Monitor",
        "activity",
        heartbeat_table(agents),
        description="Workers and agents; a silent one becomes a zombie",
        aside=rx.hstack(
            rx.badge(f"{alive_count} alive", color_scheme="green", variant="surface"),
            either(zombie_count > 0,
                   rx.badge(f"{zombie_count} zombie", color_scheme="red", variant="surface"),
                   rx.fragment()),
            spacing="2",
        ),
        id="heartbeat-monitor-panel",
    )
