"""Dead Letter Queue pieces: one row per entry with its Retry button."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import reflex as rx

from dashboard.components.badges import dead_letter_status_badge
from dashboard.components.panel import (cell, column_headers, data_table, empty_state, panel,
                                        url_text)
from dashboard.components.reactive import any_true, each, either, is_empty, negate

EMPTY_MESSAGE = "No failed deliveries."


def retry_button(entry_id: Any, busy: Any, disabled: Any, on_retry: Any) -> rx.Component:
    """A real <button>, keyboard operable; spins and is disabled while its request runs."""
    return rx.button(
        rx.icon("rotate-ccw", size=14),
        "Retry",
        on_click=on_retry,
        loading=busy,
        disabled=disabled,
        aria_label=f"Retry delivery {entry_id}",
        size="1",
        variant="soft",
        class_name="dlq-retry-button",
    )


def dead_letter_row(entry: Any, busy: Any = False, on_retry: Any = None,
                    can_retry: Any = True) -> rx.Component:
    """One DLQ entry (a DeadLetterItem, or a Var of one).

    Args:
        entry: The entry; `status` "active" shows "Failed", "retrying" shows "Queued".
        busy: Whether a Retry request for it is in flight.
        on_retry: The event the Retry button fires.
        can_retry: Whether the signed-in role may retry (viewers see the button disabled).
    """
    status = entry["status"]
    not_active = status != "active"
    return rx.table.row(
        rx.table.row_header_cell(rx.text(f"#{entry['id']}", weight="medium", size="2")),
        cell(
            rx.vstack(
                url_text(entry["endpoint_url"], "min(260px, 25vw)", size="2"),
                rx.text(entry["event_type"], size="1", color_scheme="gray"),
                spacing="0",
            ),
            label="Endpoint",
        ),
        cell(
            rx.code(entry["payload_preview"], size="1", variant="soft", color_scheme="gray",
                    display="block", max_width="300px", overflow="hidden",
                    text_overflow="ellipsis", white_space="nowrap",
                    title=entry["payload_preview"]),
            label="Payload", hide_below=1024,
        ),
        cell(
            rx.vstack(
                rx.text(entry["reason_label"], size="2"),
                rx.text(f"{entry['attempts_label']} · {entry['failed_at']}", size="1",
                        color_scheme="gray"),
                spacing="0",
            ),
            label="Failure",
        ),
        cell(dead_letter_status_badge(status), label="Status"),
        cell(
            retry_button(entry["id"], busy, any_true(busy, not_active, negate(can_retry)), on_retry),
            justify="end", actions=True,
        ),
        class_name=f"dlq-row dlq-status-{status}",
        id=f"dlq-entry-{entry['id']}",
        align="center",
    )


def dead_letter_table(entries: Any, is_busy: Callable[[Any], Any] = lambda _id: False,
                      on_retry: Callable[[Any], Any] | None = None,
                      can_retry: Any = True) -> rx.Component:
    """Entries in a table, or "No failed deliveries." (and no Retry button) when empty.

    Args:
        entries: DeadLetterItems (or a Var of the list).
        is_busy: Maps an entry id to whether its Retry request is in flight.
        on_retry: Maps an entry id to the event its Retry button fires.
    """
    return either(
        is_empty(entries),
        empty_state(EMPTY_MESSAGE, icon="circle-check", class_name="dlq-empty"),
        data_table(
            column_headers("ID", "Endpoint", "Payload", "Failure", "Status", "",
                           hide_below={"Payload": 1024}),
            rx.table.body(each(entries, lambda entry: dead_letter_row(
                entry, busy=is_busy(entry["id"]),
                on_retry=on_retry(entry["id"]) if on_retry else None, can_retry=can_retry))),
        ),
    )


def dead_letter_panel(entries: Any, failed_count: Any = 0, queued_count: Any = 0,
                      is_busy: Callable[[Any], Any] = lambda _id: False,
                      on_retry: Callable[[Any], Any] | None = None,
                      can_retry: Any = True, actions: rx.Component | None = None) -> rx.Component:
    """The Dead Letter Queue card (arguments as for `dead_letter_table`, plus the counts and
    the bulk `actions` shown above the table)."""
    return panel(
        "Dead Letter Queue",
        "inbox",
        actions or rx.fragment(),
        dead_letter_table(entries, is_busy=is_busy, on_retry=on_retry, can_retry=can_retry),
        description="Deliveries that exhausted their retries; retry one to re-deliver it",
        aside=rx.hstack(
            rx.badge(f"{failed_count} failed", color_scheme="red", variant="surface"),
            rx.badge(f"{queued_count} queued", color_scheme="amber", variant="surface"),
            spacing="2",
        ),
        id="dead-letter-queue-panel",
    )
