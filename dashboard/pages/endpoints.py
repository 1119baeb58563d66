"""The Endpoints page (`/endpoints`)."""

from __future__ import annotations

import reflex as rx

from dashboard import routes
from dashboard.components.shell import shell
from dashboard.state.endpoints import EndpointsState
from dashboard.views.endpoints import endpoints_status, endpoints_view

TITLE = "Endpoints · Observatory"
ON_LOAD = EndpointsState.load


def endpoints_page() -> rx.Component:
    return shell(routes.ENDPOINTS, endpoints_view(), status=endpoints_status())
