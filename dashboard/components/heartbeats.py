"""Heartbeat Monitor pieces: one row per worker (zombies first, highlighted) and the recent
scaling events. Rows are AgentViews / ScalingEventItems (dashboard/state/heartbeats.py), or
Vars of them."""

from __future__ import annotations

from typing import Any

import reflex as rx

from dashboard.components.badges import agent_status_badge
from dashboard.components.panel import cell, column_headers, data_table, empty_state, panel
from dashboard.components.reactive import each, either, is_empty, pick

EMPTY_MESSAGE = "No workers have reported a heartbeat."
NO_SCALING_MESSAGE = "No scaling signal yet: the fleet fits the queue."


def _field(row: Any, key: str, default: Any = "") -> Any:
    """`row[key]` of a Var, or of a plain row that may lack the label (older rows, tests)."""
    return row.get(key, default) if isinstance(row, dict) else row[key]


def agent_row(agent: Any) -> rx.Component:
    """One worker or agent (an AgentView, or a Var of one); a zombie's row is tinted red."""
    status = agent["status"]
    return rx.table.row(
        rx.table.row_header_cell(
            rx.vstack(
                rx.text(agent["id"], weight="medium", size="2", white_space="nowrap"),
                # may wrap: the monitor shares its row with the cron panel (40 % of it)
                rx.text(f"{_field(agent, 'queue_label', agent['kind'])} · "
                        f"{agent['where_label']}", size="1", color_scheme="gray",
                        overflow_wrap="anywhere"),
                spacing="0",
            ),
        ),
        cell(agent_status_badge(status), label="Status"),
        cell(
            rx.vstack(
                rx.text(agent["age_label"], size="2", weight="medium", white_space="nowrap",
                        class_name="agent-last-seen"),
                rx.text(agent["last_seen_label"], size="1", color_scheme="gray",
                        white_space="nowrap"),
                spacing="0",
            ),
            label="Last seen",
        ),
        cell(
            rx.vstack(
                rx.text(_field(agent, "running_label"), size="2", white_space="nowrap"),
                rx.text(_field(agent, "totals_label"), size="1", color_scheme="gray"),
                spacing="0",
            ),
            label="Work",
        ),
        class_name=f"agent-row agent-status-{status}",
        custom_attrs={"data-agent-id": agent["id"]},
        background=pick(status, {"zombie": rx.color("red", 3)}, "transparent"),
        align="center",
    )


def heartbeat_table(agents: Any) -> rx.Component:
    return either(
        is_empty(agents),
        empty_state(EMPTY_MESSAGE, icon="heart-off"),
        data_table(column_headers("Worker", "Status", "Last seen", "Work"),
                   rx.table.body(each(agents, agent_row))),
    )


def scaling_event_row(event: Any) -> rx.Component:
    """One scaling event (a ScalingEventItem, or a Var of one)."""
    direction = event["direction"]
    return rx.hstack(
        rx.badge(event["direction_label"], variant="soft",
                 color_scheme=pick(direction, {"scale_up": "amber"}, "blue")),
        rx.vstack(
            rx.text(event["figures_label"], size="2", weight="medium"),
            rx.text(event["reason"], size="1", color_scheme="gray"),
            spacing="0",
        ),
        rx.spacer(),
        rx.vstack(
            rx.text(event["when_label"], size="1", color_scheme="gray", white_space="nowrap"),
            rx.text(_field(event, "hooks_label"), size="1", color_scheme="gray"),
            spacing="0",
            align="end",
        ),
        id=f"scaling-event-{event['id']}",
        class_name=f"scaling-event scaling-{direction}",
        align="center",
        width="100%",
    )


def scaling_events_list(events: Any) -> rx.Component:
    return rx.vstack(
        rx.text("Scaling events", size="2", weight="bold"),
        either(is_empty(events),
               rx.text(NO_SCALING_MESSAGE, size="1", color_scheme="gray"),
               rx.vstack(each(events, scaling_event_row), spacing="2", width="100%")),
        id="scaling-events",
        spacing="2",
        width="100%",
    )


def heartbeat_panel(agents: Any, alive_count: Any = 0, zombie_count: Any = 0,
                    scaling_events: Any = ()) -> rx.Component:
    """The Heartbeat Monitor card (`id="heartbeat-monitor-panel"`)."""
    return panel(
        "Heartbeat Monitor",
        "activity",
        heartbeat_table(agents),
        rx.divider(),
        scaling_events_list(scaling_events),
        description="Workers and agents; a silent one becomes a zombie",
        aside=rx.hstack(
            rx.badge(f"{alive_count} alive", color_scheme="green", variant="surface"),
            either(zombie_count > 0,
                   rx.badge(f"{zombie_count} zombie", color_scheme="red", variant="surface",
                            id="zombie-count"),
                   rx.fragment()),
            spacing="2",
        ),
        id="heartbeat-monitor-panel",
        min_width="0",  # a grid item: never wider than its column
    )
