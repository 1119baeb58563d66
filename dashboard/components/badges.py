"""Status badges: one colour per status, the same words everywhere."""

from __future__ import annotations

from typing import Any

import reflex as rx

from dashboard.components.reactive import pick

# status -> (label, Radix colour)
CRON_STATUSES: dict[str, tuple[str, str]] = {
    "pending": ("Pending", "gray"),
    "running": ("Running", "blue"),
    "succeeded": ("Succeeded", "green"),
    "failed": ("Failed", "red"),
    "missed": ("Missed", "orange"),  # the tick did not start within its grace window
}
DEAD_LETTER_STATUSES: dict[str, tuple[str, str]] = {
    "active": ("Failed", "red"),
    "retrying": ("Queued", "amber"),  # a retry is pending: queued or being delivered
    "resolved": ("Resolved", "green"),
    "archived": ("Archived", "gray"),
}
AGENT_STATUSES: dict[str, tuple[str, str]] = {
    "alive": ("alive", "green"),
    "zombie": ("zombie", "red"),
    "stopped": ("stopped", "gray"),
}


def status_badge(label: Any, color: str, **props: Any) -> rx.Component:
    """A small solid-on-soft badge."""
    return rx.badge(label, color_scheme=color, variant="soft", radius="full", size="1", **props)


def _badge_for(status: Any, table: dict[str, tuple[str, str]], kind: str) -> rx.Component:
    cases = {
        key: status_badge(label, color, class_name=f"{kind}-badge {kind}-badge-{key}")
        for key, (label, color) in table.items()
    }
    return pick(status, cases, status_badge(status, "gray", class_name=f"{kind}-badge"))


def cron_status_badge(status: Any) -> rx.Component:
    return _badge_for(status, CRON_STATUSES, "cron")


def dead_letter_status_badge(status: Any) -> rx.Component:
    """"Failed" for an active entry, "Queued" while a retry of it is pending."""
    return _badge_for(status, DEAD_LETTER_STATUSES, "dlq")


def agent_status_badge(status: Any) -> rx.Component:
    return _badge_for(status, AGENT_STATUSES, "agent")
