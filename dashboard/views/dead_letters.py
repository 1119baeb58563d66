"""Dead Letter Queue panel bound to DeadLetterState, with Retry All (BulkRetryState)."""

from __future__ import annotations

import reflex as rx

from dashboard.components.bulk import confirm_dialog, operations_list, retry_all_button
from dashboard.components.dead_letters import dead_letter_panel
from dashboard.state.bulk import BulkRetryState as B
from dashboard.state.dead_letters import DeadLetterState
from dashboard.state.session import AuthState


def _bulk_actions() -> rx.Component:
    return rx.vstack(
        rx.hstack(
            retry_all_button(DeadLetterState.failed_count, AuthState.can_operate, B.preparing,
                             on_click=B.ask_retry_all({})),
            rx.text("Re-deliver every failed entry once, paced per endpoint; pause or cancel "
                    "at any time.", size="1", color_scheme="gray", min_width="14em", flex="1"),
            align="center", spacing="3", wrap="wrap"),
        operations_list(B.operations, is_busy=B.busy.contains, can_act=AuthState.can_operate,
                        on_pause=B.pause, on_resume=B.resume, on_cancel=B.cancel),
        rx.cond(B.finished_summary != "", rx.box(on_mount=B.announce, display="none")),
        confirm_dialog(B.confirm_open, B.confirm_total, B.new_since_confirm, B.reason,
                       B.reason_error, B.starting, on_reason=B.set_reason,
                       on_confirm=B.confirm_retry_all, on_close=B.close_confirm),
        spacing="3", width="100%", padding_bottom="0.75em",
    )


def dead_letter_view() -> rx.Component:
    return dead_letter_panel(
        DeadLetterState.entries,
        DeadLetterState.failed_count,
        DeadLetterState.queued_count,
        is_busy=DeadLetterState.in_flight.contains,
        on_retry=DeadLetterState.retry_dlq_entry,
        can_retry=AuthState.can_operate,
        actions=_bulk_actions(),
    )
