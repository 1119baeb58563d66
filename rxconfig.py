"""Reflex configuration of the Observatory dashboard (the app lives in dashboard/dashboard.py)."""

from __future__ import annotations

import os

import reflex as rx
from reflex.plugins.sitemap import SitemapPlugin

# Ports the dashboard may be served on when nothing more specific is known: Reflex's defaults.
_DEFAULT_PORTS = ("3000", "8000")


def allowed_origins() -> list[str]:
    """Origins allowed on the websocket and the API (never "*": Reflex's default allows all).

    `OBSERVATORY_PUBLIC_URL` (comma-separated) names the public origin(s), e.g. behind a proxy;
    localhost and 127.0.0.1 on the configured ports are always allowed. `reflex run
    --backend-port N` sets `REFLEX_BACKEND_PORT` only after this file is read, so
    dashboard/dashboard.py adds the served port's own origins again at import time.
    """
    origins = [
        url.strip().rstrip("/")
        for url in os.environ.get("OBSERVATORY_PUBLIC_URL", "").split(",")
        if url.strip()
    ]
    ports = [
        port
        for port in (
            os.environ.get("REFLEX_BACKEND_PORT"),
            os.environ.get("REFLEX_FRONTEND_PORT"),
            os.environ.get("PORT"),
        )
        if port
    ] or list(_DEFAULT_PORTS)
    for port in ports:
        for host in ("localhost", "127.0.0.1"):
            origin = f"http://{host}:{port}"
            if origin not in origins:
                origins.append(origin)
    return origins


config = rx.Config(
    app_name="dashboard",
    cors_allowed_origins=allowed_origins(),
    telemetry_enabled=False,
    show_built_with_reflex=False,
    plugins=[
        rx.plugins.RadixThemesPlugin(
            theme=rx.theme(appearance="light", accent_color="indigo", gray_color="slate",
                           radius="medium"),
        ),
    ],
    # The sitemap needs a public URL we do not know; an ops console has nothing to index.
    disable_plugins=[SitemapPlugin],
)
