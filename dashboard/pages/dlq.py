"""The Dead Letter Queue page (`/dlq`)."""

from __future__ import annotations

import reflex as rx

from dashboard import routes
from dashboard.components.shell import shell
from dashboard.state.dlq_page import DlqPageState
from dashboard.views.dlq_page import dlq_status, dlq_view

TITLE = "Dead letters · Observatory"
ON_LOAD = DlqPageState.load


def dlq_page() -> rx.Component:
    return shell(routes.DLQ, dlq_view(), status=dlq_status())
