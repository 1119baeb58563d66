"""The Dead Letter Queue view: filters, totals, the paged table, Export and dialogs bound to
DlqPageState, and Retry All over the current filter with the progress cards of BulkRetryState
(the same components as on the Scheduler page)."""

from __future__ import annotations

import reflex as rx

from dashboard.components.bulk import confirm_dialog, operations_list
from dashboard.components.dlq_page import (confirm_action_dialog, detail_dialog, dlq_panel,
                                           entry_table, export_menu, filter_bar, pager,
                                           sandbox_dialog, stats_strip)
from dashboard.state.bulk import BulkRetryState as B
from dashboard.state.dlq_export import limit_label
from dashboard.state.dlq_page import DlqPageState as S
from dashboard.state.session import AuthState


def dlq_status() -> rx.Component:
    """Header slot: pushes connected, and a Refresh of the page shown."""
    return rx.hstack(
        rx.cond(rx.State.is_hydrated,
                rx.badge(rx.icon("radio", size=12), "Live", color_scheme="green", variant="soft"),
                rx.badge(rx.spinner(size="1"), "Connecting", color_scheme="gray",
                         variant="soft")),
        rx.icon_button(rx.icon("refresh-cw", size=14), on_click=S.refresh, size="1",
                       variant="ghost", aria_label="Refresh dead letters"),
        align="center", spacing="2",
    )


def _retry_all() -> rx.Component:
    """Retry All over the applied filter (status aside: it retries active entries), with the
    confirmation stating the frozen count and the live progress cards."""
    return rx.vstack(
        rx.hstack(
            rx.button(rx.icon("list-restart", size=14), "Retry all matching", size="2",
                      loading=B.preparing,
                      disabled=B.preparing | ~AuthState.can_operate
                      | (S.by_status["active"] == 0),
                      on_click=B.ask_retry_all(S.scope), id="dlq-retry-all-matching",
                      aria_label="Retry all failed deliveries matching the filters"),
            rx.text("Re-deliver once every failed entry matching the filters (whatever the "
                    "status filter), paced per endpoint; pause or cancel at any time.",
                    size="1", color_scheme="gray", min_width="14em", flex="1"),
            align="center", spacing="3", wrap="wrap"),
        operations_list(B.operations, is_busy=B.busy.contains, can_act=AuthState.can_operate,
                        on_pause=B.pause, on_resume=B.resume, on_cancel=B.cancel),
        # an operation this session watched has ended: its summary toast, and fresh rows
        rx.cond(B.finished_summary != "",
                rx.box(on_mount=[B.announce, S.refresh], display="none")),
        confirm_dialog(B.confirm_open, B.confirm_total, B.new_since_confirm, B.reason,
                       B.reason_error, B.starting, on_reason=B.set_reason,
                       on_confirm=B.confirm_retry_all, on_close=B.close_confirm),
        spacing="3", width="100%",
    )


def _dialogs() -> rx.Component:
    return rx.fragment(
        detail_dialog(S.detail_id != 0, S.detail, S.detail_payload, S.detail_headers,
                      S.detail_attempts, S.detail_history, busy=S.busy.contains(S.detail_id),
                      can_retry=AuthState.can_operate, on_retry=S.retry,
                      on_sandbox=S.ask_sandbox, on_close=S.close_detail),
        sandbox_dialog(S.sandbox_id != 0, S.confirm_label, S.sandbox_form, S.sandbox_errors,
                       S.busy.contains(S.sandbox_id), on_field=S.set_sandbox_field,
                       on_confirm=S.confirm_sandbox, on_cancel=S.close_sandbox),
        confirm_action_dialog("Archive", S.archive_id != 0, S.confirm_label, S.reason,
                              S.reason_error, S.busy.contains(S.archive_id),
                              on_reason=S.set_reason, on_confirm=S.confirm_archive,
                              on_cancel=S.close_confirm),
        confirm_action_dialog("Delete", S.delete_id != 0, S.confirm_label, S.reason,
                              S.reason_error, S.busy.contains(S.delete_id),
                              on_reason=S.set_reason, on_confirm=S.confirm_delete,
                              on_cancel=S.close_confirm),
    )


def dlq_view() -> rx.Component:
    return rx.vstack(
        rx.vstack(
            rx.heading("Dead Letter Queue", size="6"),
            rx.text("Deliveries that failed for good. Filter them, inspect one, retry, archive "
                    "or delete it, or retry everything that matches.", size="2",
                    color_scheme="gray"),
            spacing="1"),
        rx.card(filter_bar(S.form, S.filter_errors, on_field=S.set_filter,
                           on_apply=S.apply, on_reset=S.reset_filters), width="100%"),
        stats_strip(S.by_status, S.total, S.oldest, S.newest),
        dlq_panel(
            entry_table(S.rows, is_busy=S.busy.contains, can_operate=AuthState.can_operate,
                        is_admin=AuthState.is_admin, on_detail=S.open_detail, on_retry=S.retry,
                        on_archive=S.ask_archive, on_delete=S.ask_delete),
            pager(S.page_number, S.previous.length() > 0, S.next_cursor != 0,
                  on_previous=S.previous_page, on_next=S.next_page),
            actions=_retry_all(),
            aside=export_menu(S.exporting != "", f"At most {limit_label()} here; the CLI "
                              "and REST export any number", on_export=S.export)),
        _dialogs(),
        spacing="5", width="100%",
    )
