"""The Audit log page (`/audit`): every signed-in role may read it."""

from __future__ import annotations

import reflex as rx

from dashboard import routes
from dashboard.components.shell import shell
from dashboard.state.audit import AuditState
from dashboard.views.audit import audit_status, audit_view

TITLE = "Audit log · Observatory"
ON_LOAD = AuditState.load


def audit_page() -> rx.Component:
    return shell(routes.AUDIT, audit_view(), status=audit_status())
