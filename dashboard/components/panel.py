"""Card building blocks shared by the views: panels, stat tiles and empty states."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import reflex as rx

#: hooks of assets/layout.css: a table whose rows stack as cards on phones (each cell named
#: by its `data-label`), a cell of buttons that may wrap instead of widening its table, and
#: the window widths (px) below which a lower-priority column can be hidden
STACKED_TABLE = "stacked-table"
ACTIONS = "cell-actions"
HIDE_BELOW = (1024, 1280)


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
        wrap="wrap",
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


def _classes(*names: str) -> dict[str, str]:
    """`class_name` of the names given (none: no prop at all)."""
    joined = " ".join(name for name in names if name)
    return {"class_name": joined} if joined else {}


def _hidden_below(width: int | None) -> str:
    if width is None:
        return ""
    if width not in HIDE_BELOW:
        raise ValueError(f"hide_below: {width} px is not one of {HIDE_BELOW} "
                         "(assets/layout.css has a rule for each)")
    return f"hide-below-{width}"


def column_headers(*labels: str, hide_below: Mapping[str, int] | None = None,
                   wrap: bool = False) -> rx.Component:
    """The header row. `hide_below` maps the labels of lower-priority columns to the window
    width (one of HIDE_BELOW) under which they are hidden, their cells too (`cell`); `wrap`
    lets a label break at its spaces (the default keeps each on one line)."""
    hidden = hide_below or {}
    nowrap = {} if wrap else {"white_space": "nowrap"}
    return rx.table.header(
        rx.table.row(*(rx.table.column_header_cell(
            label, **nowrap, **_classes(_hidden_below(hidden.get(label))))
            for label in labels))
    )


def cell(*children: rx.Component, label: str = "", hide_below: int | None = None,
         actions: bool = False, **props: Any) -> rx.Component:
    """A table cell that names its column (`label`, shown in front of it when the rows stack
    as cards on phones); `hide_below` as in `column_headers`, `actions` for a cell of
    buttons."""
    attrs = {"data-label": label} if label else {}
    return rx.table.cell(*children, custom_attrs=attrs,
                         **_classes(_hidden_below(hide_below), ACTIONS if actions else ""),
                         **props)


def data_table(headers: rx.Component, body: rx.Component, **props: Any) -> rx.Component:
    """A full-width table of a panel whose rows stack as cards on phones."""
    class_name = props.pop("class_name", "")
    return rx.table.root(headers, body, variant="ghost", size="1", width="100%",
                         **_classes(STACKED_TABLE, class_name), **props)


def url_text(url: Any, max_width: str, **props: Any) -> rx.Component:
    """A URL in a table: broken anywhere, at most two lines of `max_width` (the end of a long
    one is cut; all of it in the tooltip), so narrow windows still show the part that
    differs between endpoints."""
    return rx.text(url, title=url, max_width=max_width, overflow="hidden",
                   overflow_wrap="anywhere", display="-webkit-box",
                   style={"-webkit-line-clamp": "2", "-webkit-box-orient": "vertical"}, **props)


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
