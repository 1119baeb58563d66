"""Audit log page pieces: the filter bar, the table of rows and the pager.

Pure components like the others: they take plain values or state Vars, and events as
callables (an EventHandler, or None for a static render).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import reflex as rx
from reflex.vars import Var

from dashboard.components.panel import cell, column_headers, data_table, empty_state, panel
from dashboard.components.reactive import each, either, is_empty, negate

Event = Callable[..., Any] | None
EMPTY_MESSAGE = "No audit row matches these filters."
#: (field, label, placeholder) of the filters; each must match exactly
FILTERS = (
    ("action", "Action", "dlq.retry"),
    ("actor", "Actor", "alice or cli:root"),
    ("target_type", "Target type", "dead_letter"),
)


def _on(**events: Any) -> dict[str, Any]:
    """Only the event props that were given (a static render passes None)."""
    return {name: event for name, event in events.items() if event is not None}


def _get(mapping: Mapping[str, Any] | Var, key: str) -> Any:
    if isinstance(mapping, Var):
        return mapping[key]  # type: ignore[index]
    return mapping.get(key, "")


def _filter_field(name: str, label: str, placeholder: str, form: Any, errors: Any,
                  on_field: Event) -> rx.Component:
    error = _get(errors, name)
    return rx.vstack(
        rx.el.label(rx.text(label, as_="span", size="1", weight="medium"),  # type: ignore[arg-type]
                    html_for=f"audit-filter-{name}"),
        rx.input(value=_get(form, name), id=f"audit-filter-{name}", name=name, width="100%",
                 placeholder=placeholder, aria_invalid=either(error != "", "true", "false"),
                 **_on(on_change=(lambda value: on_field(name, value)) if on_field else None)),
        either(error != "", rx.text(error, size="1", color_scheme="red", role="alert",
                                    id=f"audit-filter-error-{name}"), rx.fragment()),
        spacing="1", min_width="160px", flex="1")


def audit_filters(form: Any, errors: Any, *, on_field: Event = None, on_apply: Event = None,
                  on_reset: Event = None) -> rx.Component:
    """Action, actor and target type (exact matches; blank: any)."""
    return rx.form(
        rx.flex(
            *(_filter_field(name, label, hint, form, errors, on_field)
              for name, label, hint in FILTERS),
            rx.hstack(
                rx.button(rx.icon("filter", size=14), "Apply", type="submit",
                          id="audit-filter-apply"),
                rx.button("Reset", type="button", variant="soft", color_scheme="gray",
                          id="audit-filter-reset", **_on(on_click=on_reset)),
                spacing="2", align="end", padding_bottom="1px"),
            wrap="wrap", spacing="3", align="start", width="100%"),
        id="audit-filters", reset_on_submit=False, **_on(on_submit=on_apply),
    )


def _filter_link(text: Any, name: str, on_filter: Event) -> rx.Component:
    """A value that filters the log by itself when clicked (plain text in a static render)."""
    if on_filter is None:
        return rx.text(text, as_="span", size="2")
    return rx.link(text, href="#", size="2", title=f"Show only this {name.replace('_', ' ')}",
                   on_click=on_filter(name, text).prevent_default)


def audit_row(item: Any, *, on_filter: Event = None) -> rx.Component:
    """One row (an AuditItem, or a Var of one); details as compact JSON."""
    return rx.table.row(
        cell(rx.text(item["at"], size="1", white_space="nowrap", title=item["at_iso"]),
             label="When (UTC)"),
        cell(_filter_link(item["actor"], "actor", on_filter), label="Actor"),
        cell(rx.code(_filter_link(item["action"], "action", on_filter), size="1"),
             label="Action"),
        cell(rx.text(item["target"], size="2", white_space="nowrap"), label="Target"),
        cell(rx.code(item["details"], size="1", word_break="break-all",
                     class_name="audit-details"), label="Details"),
        id=f"audit-row-{item['id']}", class_name="audit-row", align="center",
    )


def audit_table(rows: Any, *, on_filter: Event = None) -> rx.Component:
    """The page's rows, or an empty state."""
    return either(
        is_empty(rows),
        empty_state(EMPTY_MESSAGE, icon="search-x", class_name="audit-empty"),
        data_table(
            column_headers("When (UTC)", "Actor", "Action", "Target", "Details"),
            rx.table.body(each(rows, lambda item: audit_row(item, on_filter=on_filter))),
            id="audit-table"),
    )


def audit_pager(page_number: Any, has_previous: Any, has_next: Any, *,
                on_previous: Event = None, on_next: Event = None) -> rx.Component:
    """Previous / Next over cursors (no page count: that would need counting everything)."""
    return rx.hstack(
        rx.button(rx.icon("chevron-left", size=14), "Previous", size="1", variant="soft",
                  disabled=negate(has_previous), id="audit-page-previous",
                  **_on(on_click=on_previous)),
        rx.text(f"Page {page_number}", size="1", color_scheme="gray", id="audit-page-number"),
        rx.button("Next", rx.icon("chevron-right", size=14), size="1", variant="soft",
                  disabled=negate(has_next), id="audit-page-next", **_on(on_click=on_next)),
        spacing="3", align="center", justify="end", width="100%",
    )


def audit_panel(*children: rx.Component) -> rx.Component:
    return panel("Audit log", "scroll-text", *children,
                 description="Every operator action, newest first, 50 a page",
                 id="audit-panel")
