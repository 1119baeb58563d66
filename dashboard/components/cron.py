"""Cron Job Dashboard pieces: one table row per run, coloured by status."""

from __future__ import annotations

from typing import Any

import reflex as rx

from dashboard.components.badges import cron_status_badge
from dashboard.components.panel import column_headers, empty_state, panel
from dashboard.components.reactive import each, either, is_empty, pick

# a soft tint per status so failed and running rows stand out from the rest
_ROW_TINT = {"failed": rx.color("red", 2), "running": rx.color("blue", 2)}


def cron_row(run: Any) -> rx.Component:
    """One run (a CronRunItem, or a Var of one): its row carries `cron-status-<status>`."""
    status = run["status"]
    return rx.table.row(
        rx.table.row_header_cell(
            rx.vstack(
                rx.text(run["job"], weight="medium", size="2", white_space="nowrap"),
                rx.code(run["expression"], variant="ghost", size="1", color_scheme="gray",
                        white_space="nowrap"),
                spacing="0",
            ),
        ),
        rx.table.cell(cron_status_badge(status)),
        rx.table.cell(rx.text(run["when_label"], size="2", white_space="nowrap")),
        rx.table.cell(rx.text(run["duration_label"], size="2", color_scheme="gray",
                              white_space="nowrap")),
        rx.table.cell(
            rx.text(run["error_label"], size="1", color_scheme="red",
                    max_width="220px", overflow="hidden", text_overflow="ellipsis",
                    white_space="nowrap", title=run["error_label"]),
        ),
        class_name=f"cron-row cron-status-{status}",
        background=pick(status, _ROW_TINT, "transparent"),
        align="center",
    )


def cron_table(runs: Any, empty_message: str) -> rx.Component:
    """Runs in a table, or `empty_message` when there are none."""
    return either(
        is_empty(runs),
        empty_state(empty_message, icon="calendar-x"),
        rx.table.root(
            column_headers("Job", "Status", "Scheduled (UTC)", "Duration", "Error"),
            rx.table.body(each(runs, cron_row)),
            variant="ghost",
            size="1",
            width="100%",
        ),
    )


def cron_panel(upcoming: Any, recent: Any, failed_count: Any = 0) -> rx.Component:
    """The Cron Job Dashboard card: upcoming runs, then recent ones."""
    return panel(
        "Cron Job Dashboard",
        "calendar-clock",
        rx.vstack(
            rx.text("Upcoming", size="2", weight="bold", color_scheme="gray"),
            cron_table(upcoming, "No cron jobs are scheduled."),
            rx.text("Recent runs", size="2", weight="bold", color_scheme="gray",
                    padding_top="0.5em"),
            cron_table(recent, "No cron run has been recorded yet."),
            spacing="2",
            width="100%",
        ),
        description="Next run of every job and the latest runs",
        aside=either(failed_count > 0,
                     rx.badge(f"{failed_count} failed", color_scheme="red", variant="surface"),
                     rx.fragment()),
        id="cron-dashboard-panel",
    )
