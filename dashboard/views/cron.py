"""Cron Job Dashboard panel bound to CronState."""

from __future__ import annotations

import reflex as rx

from dashboard.components.cron import cron_panel
from dashboard.state.cron import CronState


def cron_view() -> rx.Component:
    return cron_panel(CronState.upcoming, CronState.recent, CronState.failed_count)
