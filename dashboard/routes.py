"""Route constants and URL builders of the dashboard; pages and links import them from here."""

from __future__ import annotations

from typing import NamedTuple

HOME = "/"
SCHEDULER = "/scheduler"
ENDPOINTS = "/endpoints"
DLQ = "/dlq"
AUDIT = "/audit"
LOGIN = "/login"

# Routes that show the Scheduler view (the operator's home).
SCHEDULER_ROUTES = frozenset({HOME, SCHEDULER})
# Routes the live relay pushes to (SchedulerState._wants_push): the Scheduler view, and the
# DLQ page, whose Retry All progress cards must move live (its load sets the watching flag).
LIVE_ROUTES = SCHEDULER_ROUTES | {DLQ}
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
    NavItem("Dead letters", DLQ, "inbox"),
    NavItem("Audit log", AUDIT, "scroll-text"),
)


def is_live_route(route: str) -> bool:
    """Whether a page route or `state.router.route_id` gets live pushes (LIVE_ROUTES)."""
    route = "/" + route.strip("/")
    return route in LIVE_ROUTES or route == _INDEX_ROUTE_ID
