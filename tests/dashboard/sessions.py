"""Dashboard sessions for state tests: a root state signed in as a user of a role."""

from __future__ import annotations

import reflex as rx

from dashboard.state.session import AuthState
from models.auth import SESSION_TOKEN_NAME, create_user, issue_token
from models.users import User


def actor_of(role: str) -> str:
    """The user name `signed_in(role)` signs in as (what audit rows record)."""
    return f"{role}-user"


async def signed_in(role: str = "admin") -> rx.State:
    """A new session's root state whose cookie holds a valid session token of `role`'s user."""
    user = await User.get_or_none(name=actor_of(role))
    if user is None:
        user, _, _ = await create_user(actor_of(role), role)
    root = rx.State()
    (await root.get_state(AuthState)).session_token = await issue_token(user, SESSION_TOKEN_NAME)
    return root
