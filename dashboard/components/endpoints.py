"""Endpoints page pieces: the overview table, the disable confirmation, the retry editor and
the re-sync confirmation.

Like the other components they take plain values or state Vars; event arguments are
callables (an EventHandler, or None for a static render).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import reflex as rx
from reflex.vars import Var

from dashboard.components.badges import status_badge
from dashboard.components.panel import (cell, column_headers, data_table, empty_state, panel,
                                        url_text)
from dashboard.components.reactive import any_true, each, either, is_empty, negate, pick

EMPTY_MESSAGE = "No endpoints yet. Create one with POST /v1/endpoints."
BACKOFFS = ["fixed", "linear", "exponential"]
Event = Callable[..., Any] | None

# health -> (Radix colour); the label comes from the row ("Failing since …")
HEALTH_COLORS = {"healthy": "green", "failing": "amber", "disabled": "gray"}


def _on(**events: Any) -> dict[str, Any]:
    """Only the event props that were given (a static render passes None)."""
    return {name: event for name, event in events.items() if event is not None}


def _get(mapping: Mapping[str, Any] | Var, key: str) -> Any:
    if isinstance(mapping, Var):
        return mapping[key]  # type: ignore[index]
    return mapping.get(key, "")


def health_badge(health: Any, label: Any) -> rx.Component:
    """Healthy (green), Failing since … (amber), Disabled (gray)."""
    # "Failing since …" may go on two lines where the table is short of room
    cases = {key: status_badge(label, color, class_name=f"health-badge health-badge-{key}",
                               white_space="normal")
             for key, color in HEALTH_COLORS.items()}
    return pick(health, cases, status_badge(label, "gray", class_name="health-badge",
                                            white_space="normal"))


def _actions(row: Any, busy: Any, on_disable: Event, on_enable: Event,
             on_edit_retry: Event, on_resync: Event = None) -> rx.Component:
    endpoint_id = row["id"]
    return rx.hstack(
        rx.button(rx.icon("sliders-horizontal", size=14), "Retry policy", size="1",
                  variant="soft", color_scheme="gray",
                  aria_label=f"Edit retry policy of endpoint {endpoint_id}",
                  class_name="endpoint-retry-policy-button",
                  **_on(on_click=on_edit_retry(endpoint_id) if on_edit_retry else None)),
        rx.button(rx.icon("refresh-ccw", size=14), "Re-sync", size="1", variant="soft",
                  color_scheme="indigo", disabled=any_true(busy, negate(row["enabled"])),
                  title="Re-send every message this endpoint received",
                  aria_label=f"Re-sync endpoint {endpoint_id}",
                  class_name="endpoint-resync-button",
                  **_on(on_click=on_resync(endpoint_id) if on_resync else None)),
        either(
            row["enabled"],
            rx.button(rx.icon("circle-pause", size=14), "Disable", size="1", variant="soft",
                      color_scheme="red", loading=busy, disabled=busy,
                      aria_label=f"Disable endpoint {endpoint_id}",
                      class_name="endpoint-disable-button",
                      **_on(on_click=on_disable(endpoint_id) if on_disable else None)),
            rx.button(rx.icon("circle-play", size=14), "Enable", size="1", variant="soft",
                      color_scheme="green", loading=busy, disabled=busy,
                      aria_label=f"Enable endpoint {endpoint_id}",
                      class_name="endpoint-enable-button",
                      **_on(on_click=on_enable(endpoint_id) if on_enable else None)),
        ),
        spacing="2",
        justify="end",
    )


def endpoint_row(row: Any, busy: Any = False, on_disable: Event = None, on_enable: Event = None,
                 on_edit_retry: Event = None, can_manage: Any = True,
                 on_resync: Event = None) -> rx.Component:
    """One endpoint (an EndpointItem, or a Var of one); its actions only for `can_manage`
    (admins: the role checks in the handlers are the real gate, this spares a refusal)."""
    return rx.table.row(
        rx.table.row_header_cell(rx.vstack(
            rx.text(row["app_name"], weight="medium", size="2", white_space="nowrap",
                    max_width="min(200px, 14vw)", overflow="hidden", text_overflow="ellipsis",
                    title=row["app_name"]),
            rx.text(f"#{row['id']}", size="1", color_scheme="gray"),
            spacing="0",
        )),
        cell(rx.vstack(
            url_text(row["url"], "min(280px, 22vw)", size="2"),
            rx.text(row["events_label"], size="1", color_scheme="gray"),
            spacing="0",
        ), label="Endpoint"),
        cell(rx.vstack(
            health_badge(row["health"], row["health_label"]),
            rx.text(row["reason_label"], size="1", color_scheme="gray",
                    max_width="min(200px, 18vw)",
                    overflow="hidden", text_overflow="ellipsis", white_space="nowrap",
                    title=row["reason_label"]),
            spacing="1",
        ), label="Health"),
        cell(rx.text(row["in_flight"], size="2"), label="In flight", hide_below=1280),
        cell(rx.text(row["success_label"], size="2"), label="Success (1 h)"),
        cell(rx.text(row["retry_summary"], size="1",
                     color_scheme=either(row["retry_is_default"], "gray", "indigo")),
             label="Retry policy", hide_below=1280),
        cell(either(can_manage, _actions(row, busy, on_disable, on_enable, on_edit_retry,
                                         on_resync), rx.fragment()), actions=True),
        class_name=f"endpoint-row endpoint-health-{row['health']}",
        id=f"endpoint-{row['id']}",
        align="center",
    )


def endpoint_table(rows: Any, is_busy: Callable[[Any], Any] = lambda _id: False,
                   on_disable: Event = None, on_enable: Event = None,
                   on_edit_retry: Event = None, can_manage: Any = True,
                   on_resync: Event = None) -> rx.Component:
    """Endpoints in a table, or an empty state."""
    return either(
        is_empty(rows),
        empty_state(EMPTY_MESSAGE, icon="webhook", class_name="endpoints-empty"),
        data_table(
            column_headers("Application", "Endpoint", "Health", "In flight",
                           "Success (1 h)", "Retry policy", "",
                           hide_below={"In flight": 1280, "Retry policy": 1280}, wrap=True),
            rx.table.body(each(rows, lambda row: endpoint_row(
                row, busy=is_busy(row["id"]), on_disable=on_disable, on_enable=on_enable,
                on_edit_retry=on_edit_retry, can_manage=can_manage, on_resync=on_resync))),
        ),
    )


def endpoints_panel(rows: Any, app_count: Any = 0, failing_count: Any = 0,
                    disabled_count: Any = 0, **table: Any) -> rx.Component:
    """The Endpoints card (`table` arguments as for `endpoint_table`)."""
    return panel(
        "Endpoints",
        "webhook",
        endpoint_table(rows, **table),
        description="Subscriber endpoints by application: health, load and retry policy",
        aside=rx.hstack(
            rx.badge(f"{app_count} applications", color_scheme="gray", variant="surface"),
            either(failing_count > 0, rx.badge(f"{failing_count} failing",
                                               color_scheme="amber", variant="surface"),
                   rx.fragment()),
            either(disabled_count > 0, rx.badge(f"{disabled_count} disabled",
                                                color_scheme="gray", variant="surface"),
                   rx.fragment()),
            spacing="2",
        ),
        id="endpoints-panel",
    )


def field_error(name: str, message: Any) -> rx.Component:
    """The inline error under a field (nothing when `message` is empty)."""
    return either(message != "",
                  rx.text(message, size="1", color_scheme="red", class_name="field-error",
                          id=f"retry-error-{name}", role="alert"),
                  rx.fragment())


def _label(text: str, control_id: str, weight: str = "medium") -> rx.Component:
    """A real <label for=…>: clicking it focuses the control, screen readers name it."""
    return rx.el.label(rx.text(text, as_="span", size="2", weight=weight),  # type: ignore[arg-type]
                       html_for=control_id)


def _field(label: str, name: str, control: rx.Component, error: Any) -> rx.Component:
    return rx.vstack(
        _label(label, f"retry-{name}"),
        control,
        field_error(name, error),
        spacing="1",
        width="100%",
    )


def _number(name: str, values: Any, errors: Any, on_field: Event, **props: Any) -> rx.Component:
    return rx.input(
        value=_get(values, name), id=f"retry-{name}", name=name, type="number",
        aria_invalid=either(_get(errors, name) != "", "true", "false"), width="100%", **props,
        **_on(on_change=(lambda value: on_field(name, value)) if on_field else None))


def retry_config_editor(values: Any, jitter: Any, errors: Any, *, is_default: Any = False,
                        saving: Any = False, on_field: Event = None, on_jitter: Event = None,
                        on_save: Event = None, on_reset: Event = None,
                        on_cancel: Event = None) -> rx.Component:
    """The retry policy form with one inline error slot per field.

    Args:
        values: Text of `max_retries`, `backoff`, `base_delay`, `max_delay`.
        jitter: Whether jitter is on.
        errors: Message per field (empty string = none), plus `retry_config` for the form.
        on_field: Called with (field, value) on every change.
    """
    has_errors = any_true(*(_get(errors, k) != "" for k in
                            ("max_retries", "backoff", "base_delay", "max_delay", "jitter")))
    return rx.vstack(
        either(is_default,
               rx.callout("This endpoint follows the default policy; saving gives it its own.",
                          icon="info", size="1", color_scheme="gray", width="100%"),
               rx.fragment()),
        rx.grid(
            _field("Max retries", "max_retries",
                   _number("max_retries", values, errors, on_field, min=0, max=10, step=1),
                   _get(errors, "max_retries")),
            _field("Backoff", "backoff", rx.select(
                BACKOFFS, value=_get(values, "backoff"), name="backoff", width="100%",
                **_on(on_change=(lambda value: on_field("backoff", value)) if on_field else None)),
                _get(errors, "backoff")),
            _field("Base delay (s)", "base_delay",
                   _number("base_delay", values, errors, on_field, min=1, step="any"),
                   _get(errors, "base_delay")),
            _field("Max delay (s)", "max_delay",
                   _number("max_delay", values, errors, on_field, min=1, step="any"),
                   _get(errors, "max_delay")),
            columns="2",
            spacing="3",
            width="100%",
        ),
        rx.hstack(rx.switch(checked=jitter, id="retry-jitter", **_on(on_change=on_jitter)),
                  _label("Jitter (±20 %)", "retry-jitter", weight="regular"),
                  align="center", spacing="2"),
        field_error("jitter", _get(errors, "jitter")),
        field_error("retry_config", _get(errors, "retry_config")),
        rx.hstack(
            rx.button("Use default policy", variant="ghost", color_scheme="gray",
                      disabled=any_true(saving, is_default), class_name="retry-reset-button",
                      **_on(on_click=on_reset)),
            rx.hstack(
                rx.button("Cancel", variant="soft", color_scheme="gray", **_on(on_click=on_cancel)),
                rx.button("Save", loading=saving, disabled=any_true(saving, has_errors),
                          class_name="retry-save-button", **_on(on_click=on_save)),
                spacing="2",
            ),
            justify="between",
            width="100%",
            padding_top="0.5em",
        ),
        spacing="3",
        width="100%",
        id="retry-config-editor",
    )


def retry_config_dialog(open_: Any, url: Any, editor: rx.Component,
                        on_open_change: Event = None) -> rx.Component:
    """The editor in a modal titled with the endpoint's URL."""
    return rx.dialog.root(
        rx.dialog.content(
            rx.dialog.title("Retry policy"),
            rx.dialog.description(url, size="2", color_scheme="gray", margin_bottom="1em",
                                  overflow="hidden", text_overflow="ellipsis"),
            editor,
            max_width="520px",
        ),
        open=open_,
        **_on(on_open_change=on_open_change),
    )


def disable_dialog(open_: Any, url: Any, reason: Any, error: Any, busy: Any = False, *,
                   on_reason: Event = None, on_confirm: Event = None,
                   on_cancel: Event = None) -> rx.Component:
    """"Disable this endpoint?" with a required reason; nothing happens until confirmed."""
    return rx.alert_dialog.root(
        rx.alert_dialog.content(
            rx.alert_dialog.title("Disable endpoint?"),
            rx.alert_dialog.description(
                rx.text("Deliveries to ", rx.code(url), " stop until it is enabled again."),
                size="2"),
            rx.vstack(
                _label("Reason", "disable-reason"),
                rx.input(value=reason, id="disable-reason", placeholder="e.g. receiver migrating",
                         max_length=200, width="100%", **_on(on_change=on_reason)),
                field_error("reason", error),
                spacing="1",
                width="100%",
                padding_y="1em",
            ),
            rx.hstack(
                rx.button("Cancel", variant="soft", color_scheme="gray",
                          **_on(on_click=on_cancel)),
                rx.button("Disable", color_scheme="red", loading=busy,
                          disabled=any_true(busy, reason == ""),
                          class_name="disable-confirm-button", **_on(on_click=on_confirm)),
                justify="end",
                spacing="2",
            ),
            max_width="460px",
        ),
        open=open_,
        **_on(on_open_change=(lambda is_open: on_cancel()) if on_cancel else None),
    )


def resync_dialog(open_: Any, url: Any, total: Any, since: Any, reason: Any, error: Any,
                  busy: Any = False, *, on_since: Event = None, on_reason: Event = None,
                  on_confirm: Event = None, on_cancel: Event = None) -> rx.Component:
    """"Re-send N messages?" — N is the dry run's count for the since date chosen (every
    message the endpoint received when left empty); exactly those are re-sent."""
    return rx.alert_dialog.root(
        rx.alert_dialog.content(
            rx.alert_dialog.title(f"Re-send {total} messages?"),
            rx.alert_dialog.description(
                rx.text("Every message ", rx.code(url), " received", either(
                    since != "", rx.text.span(" since ", rx.text.strong(since)), rx.fragment()),
                        " is delivered again as a new delivery, once each, paced on the bulk "
                        "lane. Exactly these ", rx.text.strong(total),
                        " messages are re-sent; you can pause or cancel from the operations "
                        "cards."),
                size="2"),
            rx.vstack(
                _label("Only messages since (optional)", "resync-since"),
                rx.input(value=since, id="resync-since", type="date", width="100%",
                         **_on(on_change=on_since)),
                _label("Reason (kept in the audit log)", "resync-reason"),
                rx.input(value=reason, id="resync-reason", max_length=500, width="100%",
                         placeholder="e.g. receiver restored from a backup",
                         **_on(on_change=on_reason)),
                field_error("resync", error),
                spacing="1",
                width="100%",
                padding_y="1em",
            ),
            rx.hstack(
                rx.button("Cancel", variant="soft", color_scheme="gray",
                          **_on(on_click=on_cancel)),
                rx.button(f"Re-send {total}", loading=busy, disabled=any_true(busy, total == 0),
                          class_name="resync-confirm-button", id="resync-confirm",
                          **_on(on_click=on_confirm)),
                justify="end",
                spacing="2",
            ),
            max_width="480px",
        ),
        open=open_,
        **_on(on_open_change=(lambda is_open: on_cancel()) if on_cancel else None),
    )
