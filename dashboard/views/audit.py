"""The Audit log view: filters, the paged table and Refresh, bound to AuditState."""

from __future__ import annotations

import reflex as rx

from dashboard.components.audit import audit_filters, audit_pager, audit_panel, audit_table
from dashboard.state.audit import AuditState as S


def audit_status() -> rx.Component:
    """Header slot: a Refresh of the page shown (the log does not push)."""
    return rx.icon_button(rx.icon("refresh-cw", size=14), on_click=S.refresh, size="1",
                          variant="ghost", aria_label="Refresh the audit log",
                          id="audit-refresh")


def audit_view() -> rx.Component:
    return rx.vstack(
        rx.vstack(
            rx.heading("Audit log", size="6"),
            rx.text("Who did what, to which target, and the facts kept (reasons, original and "
                    "new delivery ids…). Click an actor or an action to see only those.",
                    size="2", color_scheme="gray"),
            spacing="1"),
        rx.card(audit_filters(S.form, S.errors, on_field=S.set_filter, on_apply=S.apply,
                              on_reset=S.reset_filters), width="100%"),
        audit_panel(
            audit_table(S.rows, on_filter=S.filter_by),
            audit_pager(S.page_number, S.previous.length() > 0, S.next_cursor != 0,
                        on_previous=S.previous_page, on_next=S.next_page)),
        spacing="5", width="100%",
    )
