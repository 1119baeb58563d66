"""Dead Letter Queue page pieces: filters, totals, the paged table, the entry detail and the
archive/delete confirmations.

Pure components like the others: they take plain values or state Vars, and events as
callables (an EventHandler, or None for a static render).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import reflex as rx
from reflex.vars import Var

from dashboard.components.badges import DEAD_LETTER_STATUSES, dead_letter_status_badge
from dashboard.components.panel import (STACKED_TABLE, cell, column_headers, data_table,
                                        empty_state, panel, url_text)
from dashboard.components.reactive import any_true, each, either, is_empty, negate

Event = Callable[..., Any] | None
EMPTY_MESSAGE = "No DLQ entry matches these filters."
#: the status filter's choices (value, label); "open" is what an operator acts on
STATUS_OPTIONS = (
    ("open", "Failed + queued"),
    ("active", "Failed (active)"),
    ("retrying", "Queued (retrying)"),
    ("resolved", "Resolved"),
    ("archived", "Archived"),
    ("all", "All statuses"),
)


def _on(**events: Any) -> dict[str, Any]:
    """Only the event props that were given (a static render passes None)."""
    return {name: event for name, event in events.items() if event is not None}


def _get(mapping: Mapping[str, Any] | Var, key: str) -> Any:
    if isinstance(mapping, Var):
        return mapping[key]  # type: ignore[index]
    return mapping.get(key, "")


def _label(text: str, control_id: str) -> rx.Component:
    """A real <label for=…>: clicking it focuses the control, screen readers name it."""
    return rx.el.label(rx.text(text, as_="span", size="1", weight="medium"),  # type: ignore[arg-type]
                       html_for=control_id)


def _error(name: str, message: Any) -> rx.Component:
    return either(message != "",
                  rx.text(message, size="1", color_scheme="red", role="alert",
                          class_name="field-error", id=f"dlq-filter-error-{name}"),
                  rx.fragment())


def _filter_field(label: str, name: str, control: rx.Component, errors: Any) -> rx.Component:
    return rx.vstack(_label(label, f"dlq-filter-{name}"), control, _error(name, _get(errors, name)),
                     spacing="1", min_width="140px", flex="1")


def _text_input(name: str, form: Any, errors: Any, on_field: Event, **props: Any) -> rx.Component:
    return rx.input(
        value=_get(form, name), id=f"dlq-filter-{name}", name=name, width="100%",
        aria_invalid=either(_get(errors, name) != "", "true", "false"), **props,
        **_on(on_change=(lambda value: on_field(name, value)) if on_field else None))


def filter_bar(form: Any, errors: Any, *, busy: Any = False, on_field: Event = None,
               on_apply: Event = None, on_reset: Event = None) -> rx.Component:
    """Status, event type, endpoint, application, since/until (dates, UTC, inclusive) and
    text; Apply validates them all and names each bad field underneath it."""
    status = rx.select.root(
        rx.select.trigger(id="dlq-filter-status", width="100%", aria_label="Status"),
        rx.select.content(*(rx.select.item(label, value=value) for value, label in STATUS_OPTIONS)),
        value=_get(form, "status"), name="status",
        **_on(on_change=(lambda value: on_field("status", value)) if on_field else None))
    return rx.form(
        rx.flex(
            _filter_field("Status", "status", status, errors),
            _filter_field("Event type", "event_type", _text_input(
                "event_type", form, errors, on_field, placeholder="order.created"), errors),
            _filter_field("Endpoint id", "endpoint_id", _text_input(
                "endpoint_id", form, errors, on_field, input_mode="numeric"), errors),
            _filter_field("Application id", "app_id", _text_input(
                "app_id", form, errors, on_field, input_mode="numeric"), errors),
            _filter_field("Since", "since", _text_input(
                "since", form, errors, on_field, type="date"), errors),
            _filter_field("Until", "until", _text_input(
                "until", form, errors, on_field, type="date"), errors),
            _filter_field("Search", "q", _text_input(
                "q", form, errors, on_field, placeholder="error text or URL"), errors),
            rx.hstack(
                rx.button(rx.icon("filter", size=14), "Apply", type="submit", loading=busy,
                          id="dlq-filter-apply"),
                rx.button("Reset", type="button", variant="soft", color_scheme="gray",
                          id="dlq-filter-reset", **_on(on_click=on_reset)),
                spacing="2", align="end", padding_bottom="1px"),
            wrap="wrap", spacing="3", align="start", width="100%",
        ),
        id="dlq-filters",
        **_on(on_submit=on_apply),
        reset_on_submit=False,
    )


def stats_strip(by_status: Any, total: Any, oldest: Any = "—", newest: Any = "—") -> rx.Component:
    """Totals of the filter by status (whatever status is chosen), oldest and newest entry."""
    badges = [rx.badge(f"{label}: ", rx.text.strong(_get(by_status, key)), color_scheme=color,
                       variant="surface", size="2", id=f"dlq-stat-{key}")
              for key, (label, color) in DEAD_LETTER_STATUSES.items()]
    return rx.hstack(
        rx.badge("Total: ", rx.text.strong(total), color_scheme="gray", variant="surface",
                 size="2", id="dlq-stat-total"),
        *badges,
        rx.text(f"oldest {oldest} · newest {newest} UTC", size="1", color_scheme="gray"),
        spacing="2", align="center", wrap="wrap", id="dlq-stats",
    )


def _action(label: str, icon: str, entry_id: Any, event: Event, *, color: str = "gray",
            busy: Any = False, disabled: Any = False) -> rx.Component:
    return rx.button(
        rx.icon(icon, size=14), label, size="1", variant="soft", color_scheme=color,
        loading=busy, disabled=any_true(busy, disabled),
        aria_label=f"{label} DLQ entry {entry_id}",
        class_name=f"dlq-{label.lower()}-button",
        **_on(on_click=event(entry_id) if event else None))


def entry_row(entry: Any, busy: Any = False, *, can_operate: Any = True, is_admin: Any = False,
              on_detail: Event = None, on_retry: Event = None, on_archive: Event = None,
              on_delete: Event = None) -> rx.Component:
    """One entry (a DeadLetterItem, or a Var of one) with Details, Retry, Archive and, for
    admins, Delete. Buttons a role or the entry's status rules out are disabled; the
    handlers check again."""
    entry_id, status = entry["id"], entry["status"]
    return rx.table.row(
        rx.table.row_header_cell(rx.link(
            f"#{entry_id}", href="#", weight="medium", size="2",
            **_on(on_click=(on_detail(entry_id).prevent_default) if on_detail else None))),
        cell(rx.vstack(
            rx.text(entry["event_type"], size="2"),
            url_text(entry["endpoint_url"], "min(260px, 25vw)", size="1", color_scheme="gray"),
            spacing="0"), label="Event · endpoint"),
        cell(rx.vstack(
            rx.text(entry["reason_label"], size="2"),
            rx.text(entry["attempts_label"], size="1", color_scheme="gray"),
            spacing="0"), label="Failure"),
        cell(rx.text(entry["failed_at"], size="1", white_space="nowrap"),
             label="Failed at (UTC)"),
        cell(dead_letter_status_badge(status), label="Status"),
        cell(rx.hstack(
            _action("Details", "file-search", entry_id, on_detail),
            _action("Retry", "rotate-ccw", entry_id, on_retry, color="indigo", busy=busy,
                    disabled=any_true(status != "active", negate(can_operate))),
            _action("Archive", "archive", entry_id, on_archive, busy=busy,
                    disabled=any_true(negate(any_true(status == "active", status == "resolved")),
                                      negate(can_operate))),
            either(is_admin, _action("Delete", "trash-2", entry_id, on_delete, color="red",
                                     busy=busy, disabled=status == "retrying"), rx.fragment()),
            spacing="2", justify="end"), actions=True),
        class_name=f"dlq-page-row dlq-status-{status}",
        id=f"dlq-page-entry-{entry_id}",
        align="center",
    )


def entry_table(rows: Any, is_busy: Callable[[Any], Any] = lambda _id: False,
                **row: Any) -> rx.Component:
    """The page's entries, or an empty state (`row` arguments as for `entry_row`)."""
    return either(
        is_empty(rows),
        empty_state(EMPTY_MESSAGE, icon="search-x", class_name="dlq-page-empty"),
        data_table(
            column_headers("ID", "Event · endpoint", "Failure", "Failed at (UTC)", "Status", ""),
            rx.table.body(each(rows, lambda entry: entry_row(entry, is_busy(entry["id"]), **row))),
            id="dlq-page-table",
        ),
    )


def pager(page_number: Any, has_previous: Any, has_next: Any, *, on_previous: Event = None,
          on_next: Event = None) -> rx.Component:
    """Previous / Next over cursors (no page count: that would need counting everything)."""
    return rx.hstack(
        rx.button(rx.icon("chevron-left", size=14), "Previous", size="1", variant="soft",
                  disabled=negate(has_previous), id="dlq-page-previous",
                  **_on(on_click=on_previous)),
        rx.text(f"Page {page_number}", size="1", color_scheme="gray", id="dlq-page-number"),
        rx.button("Next", rx.icon("chevron-right", size=14), size="1", variant="soft",
                  disabled=negate(has_next), id="dlq-page-next", **_on(on_click=on_next)),
        spacing="3", align="center", justify="end", width="100%",
    )


def export_menu(busy: Any = False, note: str = "", *, on_export: Event = None) -> rx.Component:
    """Export the entries matching the applied filters: a menu of CSV and JSON Lines (and
    `note`, e.g. the size limit); the button spins while the file is made."""
    items = [rx.menu.item(rx.icon(icon, size=14), label, id=f"dlq-export-{fmt}",
                          disabled=busy, **_on(on_select=on_export(fmt) if on_export else None))
             for fmt, label, icon in (("csv", "CSV", "sheet"),
                                      ("jsonl", "JSON Lines", "file-json"))]
    return rx.menu.root(
        rx.menu.trigger(rx.button(rx.icon("download", size=14), "Export", size="2",
                                  variant="soft", loading=busy, id="dlq-export",
                                  aria_label="Export the entries matching the filters")),
        rx.menu.content(*items, *([rx.menu.separator(), rx.menu.item(
            note, disabled=True, class_name="dlq-export-note")] if note else [])),
    )


def dlq_panel(table: rx.Component, pager_: rx.Component, *, actions: rx.Component | None = None,
              aside: rx.Component | None = None) -> rx.Component:
    return panel("Dead letters", "inbox", actions or rx.fragment(), table, pager_,
                 description="Newest first, 50 a page; filter, inspect and act on entries",
                 aside=aside, id="dlq-page-panel")


# -- the entry detail ---------------------------------------------------------------------------

def _fact(label: str, value: Any) -> rx.Component:
    return rx.vstack(rx.text(label, size="1", color_scheme="gray"),
                     rx.text(value, size="2", overflow_wrap="anywhere"), spacing="0")


def _section(title: str, *children: rx.Component, **props: Any) -> rx.Component:
    return rx.vstack(rx.heading(title, size="3"), *children, spacing="2", width="100%", **props)


def _small_table(headers: tuple[str, ...], rows: Any,
                 cells: Callable[[Any], list[Any]], empty: str) -> rx.Component:
    return either(
        is_empty(rows),
        rx.text(empty, size="1", color_scheme="gray"),
        rx.table.root(
            column_headers(*headers),
            rx.table.body(each(rows, lambda item: rx.table.row(
                *(cell(rx.text(value, size="1", overflow_wrap="anywhere"), label=header)
                  for header, value in zip(headers, cells(item), strict=True))))),
            variant="surface", size="1", width="100%", class_name=STACKED_TABLE),
    )


def detail_dialog(open_: Any, fields: Any, payload: Any, headers: Any, attempts: Any,
                  history: Any, *, busy: Any = False, can_retry: Any = True,
                  on_retry: Event = None, on_sandbox: Event = None,
                  on_close: Event = None) -> rx.Component:
    """An entry: facts, the payload (pretty JSON), the headers a delivery carries (never the
    secret), every attempt of the failed delivery and of its last retry, the error history."""
    entry_id = _get(fields, "id")
    return rx.dialog.root(
        rx.dialog.content(
            rx.dialog.title(f"DLQ entry #{entry_id}"),
            rx.dialog.description(
                rx.hstack(dead_letter_status_badge(_get(fields, "status")),
                          rx.text(_get(fields, "event_type"), " → ",
                                  rx.code(_get(fields, "endpoint_url")), size="2",
                                  overflow_wrap="anywhere", min_width="0"),  # long URLs
                          spacing="2", align="center", wrap="wrap"),
                margin_bottom="1em"),
            rx.vstack(
                rx.grid(
                    _fact("Failure", _get(fields, "failure_reason")),
                    _fact("Attempts", _get(fields, "attempts")),
                    _fact("Retries", _get(fields, "retry_count")),
                    _fact("Failed at (UTC)", _get(fields, "created_at")),
                    _fact("Endpoint id", _get(fields, "endpoint_id")),
                    _fact("Application id", _get(fields, "app_id")),
                    _fact("Message id", _get(fields, "message_id")),
                    _fact("Delivery id", _get(fields, "delivery_id")),
                    columns=rx.breakpoints(initial="2", sm="4"), spacing="3", width="100%"),
                _section("Payload", rx.el.pre(
                    payload, id="dlq-detail-payload", font_family="var(--code-font-family)",
                    font_size="12px", padding="0.75em", border_radius="6px", margin="0",
                    background=rx.color("gray", 3), max_height="260px", overflow="auto",
                    white_space="pre-wrap", word_break="break-all", width="100%")),
                _section("Headers", _small_table(
                    ("Header", "Value"), headers, lambda h: [h["name"], h["value"]],
                    "No headers."), id="dlq-detail-headers"),
                _section("Attempts", _small_table(
                    ("Delivery", "#", "At", "Status", "Error", "Duration", "Response"), attempts,
                    lambda a: [a["delivery"], a["number"], a["at"], a["status_code"], a["error"],
                               a["duration"], a["response"]],
                    "No attempt was recorded."), id="dlq-detail-attempts"),
                _section("Error history", _small_table(
                    ("Attempt", "At", "Status", "Error", "Duration"), history,
                    lambda h: [h["attempt"], h["at"], h["status_code"], h["error"],
                               h["duration"]],
                    "No error history."), id="dlq-detail-history"),
                spacing="4", width="100%", max_height="65vh", overflow_y="auto",
                padding_right="0.5em"),
            rx.hstack(
                rx.button(rx.icon("flask-conical", size=14), "Sandbox retry", variant="soft",
                          color_scheme="gray", disabled=any_true(busy, negate(can_retry)),
                          id="dlq-detail-sandbox",
                          **_on(on_click=on_sandbox(entry_id) if on_sandbox else None)),
                rx.button(rx.icon("rotate-ccw", size=14), "Retry", loading=busy,
                          disabled=any_true(busy, _get(fields, "status") != "active",
                                            negate(can_retry)),
                          id="dlq-detail-retry",
                          **_on(on_click=on_retry(entry_id) if on_retry else None)),
                rx.dialog.close(rx.button("Close", variant="soft", color_scheme="gray",
                                          id="dlq-detail-close")),
                justify="end", spacing="2", padding_top="1em"),
            max_width="960px", id="dlq-detail",
        ),
        open=open_,
        **_on(on_open_change=(lambda _open: on_close()) if on_close else None),
    )


# -- archive / delete confirmations --------------------------------------------------------------

def confirm_action_dialog(action: str, open_: Any, label: Any, reason: Any, error: Any,
                          busy: Any = False, *, on_reason: Event = None,
                          on_confirm: Event = None, on_cancel: Event = None) -> rx.Component:
    """"Archive DLQ entry #12 (order.created → https://…)?" with an optional reason (kept in
    the audit log); `action` is "Archive" or "Delete"."""
    key = action.lower()
    consequence = {
        "archive": "It leaves the list of failed deliveries; it can be unarchived later.",
        "delete": "It is removed for good; the audit log keeps its facts. This cannot be undone.",
    }[key]
    return rx.alert_dialog.root(
        rx.alert_dialog.content(
            rx.alert_dialog.title(f"{action} DLQ entry {label}?"),
            rx.alert_dialog.description(consequence, size="2"),
            rx.vstack(
                _label("Reason (optional, kept in the audit log)", f"dlq-{key}-reason"),
                rx.input(value=reason, id=f"dlq-{key}-reason", max_length=500, width="100%",
                         placeholder="e.g. receiver retired", **_on(on_change=on_reason)),
                either(error != "", rx.text(error, size="1", color_scheme="red", role="alert",
                                            id=f"dlq-{key}-reason-error"), rx.fragment()),
                spacing="1", width="100%", padding_y="1em"),
            rx.hstack(
                rx.button("Cancel", variant="soft", color_scheme="gray", id=f"dlq-{key}-cancel",
                          **_on(on_click=on_cancel)),
                rx.button(action, color_scheme="red" if key == "delete" else "amber",
                          loading=busy, id=f"dlq-{key}-confirm", **_on(on_click=on_confirm)),
                justify="end", spacing="2"),
            max_width="480px", id=f"dlq-{key}-dialog",
        ),
        open=open_,
        **_on(on_open_change=(lambda _open: on_cancel()) if on_cancel else None),
    )


# -- sandbox retry --------------------------------------------------------------------------------

def _sandbox_field(label: str, name: str, control: rx.Component, errors: Any,
                   hint: str = "") -> rx.Component:
    return rx.vstack(
        _label(label, f"dlq-sandbox-{name}"),
        control,
        rx.text(hint, size="1", color_scheme="gray") if hint else rx.fragment(),
        either(_get(errors, name) != "",
               rx.text(_get(errors, name), size="1", color_scheme="red", role="alert",
                       class_name="field-error", id=f"dlq-sandbox-error-{name}"),
               rx.fragment()),
        spacing="1", width="100%")


def sandbox_dialog(open_: Any, label: Any, form: Any, errors: Any, busy: Any = False, *,
                   on_field: Event = None, on_confirm: Event = None,
                   on_cancel: Event = None) -> rx.Component:
    """Send the entry once to another URL, with extra headers and payload fields replaced, to
    test a fix; the entry keeps its status and the production endpoint is not called."""
    def change(name: str) -> dict[str, Any]:
        return _on(on_change=(lambda value: on_field(name, value)) if on_field else None)

    return rx.dialog.root(
        rx.dialog.content(
            rx.dialog.title(f"Sandbox retry of DLQ entry {label}"),
            rx.dialog.description(
                "One delivery of the message, signed as usual, to the URL below. The entry "
                "keeps its status and nothing counts against the endpoint.", size="2",
                margin_bottom="1em"),
            rx.vstack(
                _sandbox_field("URL", "url", rx.input(
                    value=_get(form, "url"), id="dlq-sandbox-url", width="100%",
                    placeholder="https://staging.example.com/hooks", **change("url")), errors),
                _sandbox_field("Extra headers", "headers", rx.text_area(
                    value=_get(form, "headers"), id="dlq-sandbox-headers", rows="3",
                    width="100%", placeholder="X-Debug: 1", **change("headers")), errors,
                    hint='One "Name: value" a line; the webhook-* headers are set for you.'),
                _sandbox_field("Payload fields", "payload", rx.text_area(
                    value=_get(form, "payload"), id="dlq-sandbox-payload", rows="5",
                    width="100%", font_family="var(--code-font-family)",
                    placeholder='{"amount": "0.01"}', **change("payload")), errors,
                    hint="A JSON object; its fields replace those of the payload."),
                spacing="3", width="100%"),
            rx.hstack(
                rx.button("Cancel", variant="soft", color_scheme="gray", id="dlq-sandbox-cancel",
                          **_on(on_click=on_cancel)),
                rx.button(rx.icon("flask-conical", size=14), "Send sandbox retry", loading=busy,
                          id="dlq-sandbox-confirm", **_on(on_click=on_confirm)),
                justify="end", spacing="2", padding_top="1em"),
            max_width="560px", id="dlq-sandbox-dialog",
        ),
        open=open_,
        **_on(on_open_change=(lambda _open: on_cancel()) if on_cancel else None),
    )
