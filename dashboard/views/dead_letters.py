"""Dead Letter Queue panel bound to DeadLetterState."""

from __future__ import annotations

import reflex as rx

from dashboard.components.dead_letters import dead_letter_panel
from dashboard.state.dead_letters import DeadLetterState
from dashboard.state.session import AuthState


def dead_letter_view() -> rx.Component:
    return dead_letter_panel(
        DeadLetterState.entries,
        DeadLetterState.failed_count,
        DeadLetterState.queued_count,
        is_busy=DeadLetterState.in_flight.contains,
        on_retry=DeadLetterState.retry_dlq_entry,
        can_retry=AuthState.can_operate,
    )
