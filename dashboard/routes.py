"""Route constants and URL builders of the dashboard; pages and links import them from here."""

from __future__ import annotations

from typing import NamedTuple

HOME = "/"
SCHEDULER = "/scheduler"
ENDPOINTS = "/endpoints"
LOGIN = "/login"

# Routes that show the Scheduler view (the operator's home); the live relay pushes to them.
SCHEDULER_ROUTES = frozenset({HOME, SCHEDULER})
# Reflex names the index page "index": `state.router.route_id` is "/index" on "/".
_INDEX_ROUTE_ID = "/index"


class NavItem(NamedTuple):
    label: str
    route: str
    icon: str  # lucide icon name


# The header's navigation, in order. Add a view here when its page exists.
NAV: tuple[NavItem, ...] = (
    NavItem("Scheduler", SCHEDULER, "calendar-clock"),
    NavItem("Endpoints", ENDPOINTS, "webhook"),
)


def is_scheduler_route(route: str) -> bool:
    """Whether a page route or `state.router.route_id` shows the Scheduler view."""
    route = "/" + route.strip("/")
    return route in SCHEDULER_ROUTES or route == _INDEX_ROUTE_ID
