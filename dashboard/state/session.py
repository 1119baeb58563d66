"""Who is acting: the one place a dashboard handler learns its actor (audit log, roles)."""

from __future__ import annotations

import reflex as rx

# No login page yet: every dashboard action is attributed to this actor.
DASHBOARD_ACTOR = "dashboard"


async def current_actor(state: rx.State) -> str:
    """The actor name recorded for an action taken from this browser session.

    Args:
        state: Any state of the session (the handler's own `self`); once the login page
            lands, the session user is read from its state with `await state.get_state(...)`,
            and role checks belong here too, inside every handler (not only on page load).

    Returns:
        The actor name to pass to the operations in `jobs.operations`.
    """
    del state  # no session user yet
    return DASHBOARD_ACTOR
