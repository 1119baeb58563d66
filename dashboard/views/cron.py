"""Cron Job Dashboard panel bound to CronState (actions for operators and admins)."""

from __future__ import annotations

import reflex as rx

from dashboard.components.cron import cron_panel
from dashboard.state.cron import CronState
from dashboard.state.session import AuthState


def cron_view() -> rx.Component:
    return cron_panel(
        CronState.upcoming, CronState.recent, CronState.failed_count, CronState.missed_count,
        is_busy=CronState.busy.contains, can_operate=AuthState.can_operate,
        on_run=CronState.run_job, on_pause=CronState.pause_job, on_resume=CronState.resume_job,
        on_retry=CronState.retry_run)
