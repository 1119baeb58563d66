"""The Scheduler view: summary tiles, then the cron, DLQ and heartbeat panels."""

from __future__ import annotations

import reflex as rx

from dashboard.components.panel import guarded, stat
from dashboard.state.cron import CronState
from dashboard.state.dead_letters import DeadLetterState
from dashboard.state.heartbeats import HeartbeatState
from dashboard.state.scheduler import SchedulerState
from dashboard.views.cron import cron_view
from dashboard.views.dead_letters import dead_letter_view
from dashboard.views.heartbeats import heartbeat_view


def live_status() -> rx.Component:
    """Header indicator: connected (pushes arrive) and the time of the last refresh."""
    return rx.hstack(
        rx.cond(
            rx.State.is_hydrated,
            rx.badge(rx.icon("radio", size=12), "Live", color_scheme="green", variant="soft"),
            rx.badge(rx.spinner(size="1"), "Connecting", color_scheme="gray", variant="soft"),
        ),
        rx.text(
            rx.cond(SchedulerState.refreshed_at != "",
                    f"Updated {SchedulerState.refreshed_at} UTC", ""),
            size="1", color_scheme="gray", class_name="header-detail",
        ),
        align="center",
        spacing="2",
    )


def _summary() -> rx.Component:
    return rx.grid(
        stat("Failed deliveries", DeadLetterState.failed_count, "circle-alert", "red"),
        stat("Retries queued", DeadLetterState.queued_count, "rotate-ccw", "amber"),
        stat("Failed cron runs", CronState.failed_count, "calendar-x", "orange"),
        stat("Workers alive", HeartbeatState.alive_count, "server", "green"),
        stat("Zombies", HeartbeatState.zombie_count, "skull", "red"),
        columns=rx.breakpoints(initial="2", sm="3", lg="5"),
        spacing="3",
        width="100%",
    )


def _guard(panel: str, view: rx.Component, title: str) -> rx.Component:
    return guarded(panel.replace("_", "-"), SchedulerState.panel_errors.get(panel, ""), view,
                   title)


def scheduler_view() -> rx.Component:
    return rx.vstack(
        rx.vstack(
            rx.heading("Scheduler", size="6"),
            rx.text("Cron schedule, failed deliveries and worker health, updated live.",
                    size="2", color_scheme="gray"),
            spacing="1",
        ),
        _summary(),
        _guard("dead_letters", dead_letter_view(), "Dead Letter Queue"),
        rx.grid(
            _guard("cron", cron_view(), "Cron Job Dashboard"),
            _guard("heartbeats", heartbeat_view(), "Heartbeat Monitor"),
            grid_template_columns=rx.breakpoints(initial="1fr", lg="3fr 2fr"),
            spacing="4",
            width="100%",
        ),
        spacing="5",
        width="100%",
    )
