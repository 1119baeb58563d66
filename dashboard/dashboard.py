"""The Reflex app: pages, the REST API mounted on the same server, and the lifespan tasks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import reflex as rx

from dashboard import routes, runtime
from dashboard.api.app import api
from dashboard.pages import audit, dlq, endpoints, login, scheduler
from dashboard.state.session import AuthState
from dashboard.relay import live_relay
from models.db import close_db


def _allow_served_origins() -> None:
    """Allow the origin of the port actually served (see rxconfig.allowed_origins).

    `reflex run --backend-port N` exports REFLEX_BACKEND_PORT after rxconfig.py was read but
    before this module is imported, and the socket's CORS list is taken when the app starts.
    """
    config = rx.config.get_config()
    origins = list(config.cors_allowed_origins)
    if origins == ["*"]:
        return
    for port in {config.backend_port, config.frontend_port} - {None}:
        for host in ("localhost", "127.0.0.1"):
            if (origin := f"http://{host}:{port}") not in origins:
                origins.append(origin)
    config.cors_allowed_origins = origins


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[None]:
    """Lifespan task: connect tortoise before serving, close it on shutdown."""
    await runtime.ensure_db()
    try:
        yield
    finally:
        await runtime.close()
        await close_db()


_allow_served_origins()

# The Radix theme is configured in rxconfig.py (RadixThemesPlugin), as Reflex 0.10 wants.
app = rx.App(
    api_transformer=api,
    stylesheets=["/layout.css"],  # assets/layout.css: the header and tables on narrow windows
    head_components=[rx.el.meta(name="description", content="Observatory operations console")],
)

# Every page but the login page needs a sign-in; the loads themselves check it again (a
# session without one gets no rows), and every action checks the role (state/session.py).
for route in (routes.HOME, routes.SCHEDULER):
    app.add_page(scheduler.scheduler_page, route=route, title=scheduler.TITLE,
                 on_load=[AuthState.require_login, scheduler.ON_LOAD])
app.add_page(endpoints.endpoints_page, route=routes.ENDPOINTS, title=endpoints.TITLE,
             on_load=[AuthState.require_login, endpoints.ON_LOAD])
app.add_page(dlq.dlq_page, route=routes.DLQ, title=dlq.TITLE,
             on_load=[AuthState.require_login, dlq.ON_LOAD])
app.add_page(audit.audit_page, route=routes.AUDIT, title=audit.TITLE,
             on_load=[AuthState.require_login, audit.ON_LOAD])
app.add_page(login.login_page, route=routes.LOGIN, title=login.TITLE)

# Order matters: lifespan contexts exit in reverse, so the relay stops before the database.
app.register_lifespan_task(database)
app.register_lifespan_task(live_relay)
