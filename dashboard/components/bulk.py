"""Retry All: the button, the confirmation with its frozen count, and progress cards with
Pause, Resume and Cancel for every bulk operation (titled by kind: "Retry all #3",
"Re-sync #4", "Archive #5", "Delete #6"). Pure components: values and events come in as
arguments."""

from __future__ import annotations

from typing import Any

import reflex as rx

from dashboard.components.badges import status_badge
from dashboard.components.reactive import any_true, each, either, negate, pick

Event = Any

#: state → (label, colour) of an operation's badge
STATE_BADGES = {
    "running": ("Running", "blue"),
    "paused": ("Paused", "amber"),
    "halted": ("Halted by canary", "red"),
    "cancelling": ("Cancelling", "orange"),
    "cancelled": ("Cancelled", "gray"),
    "completed": ("Completed", "green"),
    "failed": ("Failed", "red"),
}


def retry_all_button(active_count: Any, can_act: Any, busy: Any,
                     on_click: Event = None) -> rx.Component:
    return rx.button(
        rx.icon("list-restart", size=14), "Retry all", size="2", variant="solid",
        loading=busy, disabled=any_true(busy, negate(can_act), active_count == 0),
        aria_label="Retry all failed deliveries", id="retry-all-button",
        **({"on_click": on_click} if on_click is not None else {}),
    )


def confirm_dialog(open_: Any, total: Any, new_since: Any, reason: Any, reason_error: Any,
                   busy: Any, *, on_reason: Event = None, on_confirm: Event = None,
                   on_close: Event = None) -> rx.Component:
    """"Retry N failed deliveries?" — N was frozen when the dialog opened; failures arriving
    meanwhile are counted, not swept in."""
    return rx.alert_dialog.root(
        rx.alert_dialog.content(
            rx.alert_dialog.title(f"Retry {total} failed deliveries?"),
            rx.alert_dialog.description(
                rx.text("Each entry is re-delivered once, paced per endpoint, on the bulk lane "
                        "(live traffic is not slowed). Exactly these ", rx.text.strong(total),
                        " entries are retried; you can pause or cancel at any time."),
                size="2"),
            either(new_since > 0,
                   rx.callout(f"{new_since} new failures since you opened this (not included).",
                              icon="info", color_scheme="amber", size="1",
                              id="retry-all-new-since", margin_top="0.75em"),
                   rx.fragment()),
            rx.vstack(
                rx.el.label(rx.text("Reason (kept in the audit log)", as_="span", size="2",
                                    weight="medium"), html_for="retry-all-reason"),
                rx.input(value=reason, id="retry-all-reason", max_length=500, width="100%",
                         placeholder="e.g. receiver fixed after the outage",
                         **({"on_change": on_reason} if on_reason is not None else {})),
                either(reason_error != "",
                       rx.text(reason_error, size="1", color_scheme="red", role="alert",
                               id="retry-all-reason-error"),
                       rx.fragment()),
                spacing="1", width="100%", padding_y="1em",
            ),
            rx.hstack(
                rx.alert_dialog.cancel(rx.button("Cancel", variant="soft", color_scheme="gray",
                                                 id="retry-all-dismiss")),
                rx.button(f"Retry {total}", loading=busy, id="retry-all-confirm",
                          **({"on_click": on_confirm} if on_confirm is not None else {})),
                justify="end", spacing="2",
            ),
            max_width="480px",
        ),
        open=open_,
        **({"on_open_change": lambda is_open: on_close()} if on_close is not None else {}),
    )


def _state_badge(state: Any) -> rx.Component:
    cases = {key: status_badge(label, color, class_name=f"bulk-state bulk-state-{key}")
             for key, (label, color) in STATE_BADGES.items()}
    return pick(state, cases, status_badge(state, "gray", class_name="bulk-state"))


def operation_card(op: Any, busy: Any = False, can_act: Any = True, *, on_pause: Event = None,
                   on_resume: Event = None, on_cancel: Event = None) -> rx.Component:
    """One operation: state, a progress bar, the figures, ETA and its controls."""
    op_id = op["id"]
    state = op["state"]

    def control(label: str, icon: str, event: Event, color: str, shown: Any) -> rx.Component:
        return either(shown, rx.button(
            rx.icon(icon, size=14), label, size="1", variant="soft", color_scheme=color,
            loading=busy, disabled=any_true(busy, negate(can_act)),
            aria_label=f"{label} operation {op_id}",
            class_name=f"bulk-{label.lower()}-button",
            **({"on_click": event(op_id)} if event is not None else {})), rx.fragment())

    return rx.box(
        rx.vstack(
            rx.hstack(
                rx.hstack(
                    rx.text(op["title"], weight="medium", size="2",
                            class_name="bulk-title"),
                    _state_badge(state),
                    rx.text(op["scope_label"], size="1", color_scheme="gray"),
                    align="center", spacing="2"),
                rx.hstack(
                    control("Pause", "pause", on_pause, "gray", state == "running"),
                    control("Resume", "play", on_resume, "green",
                            any_true(state == "paused", state == "halted")),
                    control("Cancel", "circle-stop", on_cancel, "red",
                            any_true(state == "running", state == "paused", state == "halted")),
                    spacing="2"),
                justify="between", align="center", width="100%"),
            rx.progress(value=op["percent"], max=100, width="100%",
                        aria_label=f"Operation {op_id} progress",
                        id=f"bulk-progress-{op_id}"),
            rx.hstack(
                rx.text(f"{op['done']} of {op['total']}", size="2", weight="medium",
                        class_name="bulk-done"),
                rx.text(op["figures_label"], size="1", color_scheme="gray",
                        class_name="bulk-figures"),
                rx.text(op["eta_label"], size="1", color_scheme="gray", class_name="bulk-eta"),
                spacing="3", align="baseline", wrap="wrap"),
            either(op["halted_reason"] != "",
                   rx.callout(op["halted_reason"], icon="octagon-alert", color_scheme="red",
                              size="1"), rx.fragment()),
            either(op["new_failures"] > 0,
                   rx.text(f"{op['new_failures']} new failures since it was confirmed "
                           "(not included)", size="1", color_scheme="amber",
                           class_name="bulk-new-failures"), rx.fragment()),
            spacing="2", width="100%"),
        padding="0.75em",
        border=f"1px solid {rx.color('gray', 5)}",
        border_radius="8px",
        background=rx.color("gray", 1),
        id=f"bulk-operation-{op_id}",
        class_name=f"bulk-operation bulk-operation-{state}",
        width="100%",
    )


def operations_list(operations: Any, is_busy: Any = lambda _id: False, can_act: Any = True,
                    **events: Event) -> rx.Component:
    return rx.vstack(
        each(operations, lambda op: operation_card(op, is_busy(op["id"]), can_act, **events)),
        spacing="2", width="100%", id="bulk-operations",
    )
