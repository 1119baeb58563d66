"""Card building blocks shared by the views: panels, stat tiles and empty states."""

from __future__ import annotations

from typing import Any

import reflex as rx


def panel(title: str, icon: str, *children: rx.Component, description: str = "",
          aside: rx.Component | None = None, **props: Any) -> rx.Component:
    """A titled card: icon + title (+ description) on the left, `aside` on the right."""
    header = rx.hstack(
        rx.hstack(
            rx.center(rx.icon(icon, size=18), class_name="panel-icon",
                      width="32px", height="32px", border_radius="8px",
                      background=rx.color("accent", 3), color=rx.color("accent", 11)),
            rx.vstack(
                rx.heading(title, size="4", weight="bold"),
                rx.text(description, size="1", color_scheme="gray") if description
                else rx.fragment(),
                spacing="0",
            ),
            align="center",
            spacing="3",
        ),
        aside or rx.fragment(),
        justify="between",
        align="center",
        width="100%",
    )
    return rx.card(
        rx.vstack(header, *children, spacing="4", width="100%"),
        size="3",
        width="100%",
        **props,
    )


def stat(label: str, value: Any, icon: str, color: str = "gray") -> rx.Component:
    """A summary tile: a big number with a label."""
    return rx.card(
        rx.hstack(
            rx.vstack(
                rx.text(label, size="1", weight="medium", color_scheme="gray"),
                rx.text(value, size="6", weight="bold"),
                spacing="1",
            ),
            rx.icon(icon, size=22, color=rx.color(color, 9)),
            justify="between",
            align="start",
            width="100%",
        ),
        size="2",
        width="100%",
    )


def empty_state(message: str, icon: str = "inbox", **props: Any) -> rx.Component:
    """A quiet centred message for a panel with nothing to show."""
    return rx.center(
        rx.vstack(
            rx.icon(icon, size=28, color=rx.color("gray", 8)),
            rx.text(message, size="2", color_scheme="gray"),
            align="center",
            spacing="2",
        ),
        padding_y="2em",
        width="100%",
        **props,
    )


def column_headers(*labels: str) -> rx.Component:
    return rx.table.header(
        rx.table.row(*(rx.table.column_header_cell(label, white_space="nowrap")
                       for label in labels))
    )


def guarded(panel_id: str, error: Any, content: rx.Component, title: str) -> rx.Component:
    """`content`, or — while its data cannot be loaded — an error card in its place (the
    other panels keep working)."""
    return rx.cond(
        error != "",
        panel(title, "triangle-alert",
              rx.callout(error, icon="circle-alert", color_scheme="red", role="alert",
                         class_name="panel-error"),
              id=f"{panel_id}-error"),
        content,
    )
