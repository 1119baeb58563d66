"""The Scheduler page (`/` and `/scheduler`), the operator's home."""

from __future__ import annotations

import reflex as rx

from dashboard import routes
from dashboard.components.shell import shell
from dashboard.state.scheduler import SchedulerState
from dashboard.views.scheduler import live_status, scheduler_view

TITLE = "Scheduler · Observatory"
ON_LOAD = SchedulerState.load


def scheduler_page() -> rx.Component:
    return shell(routes.SCHEDULER, scheduler_view(), status=live_status())
