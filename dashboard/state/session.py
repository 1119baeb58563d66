"""Who is acting: sign-in, sign-out, and the one place a dashboard handler learns its actor.

A sign-in issues an API token of its own (`SESSION_TOKEN_NAME`) kept in a cookie; every action
re-reads that token's user from the database (`current_actor`), so a revoked token, a deleted
user or a changed role takes effect at the next click, not the next page load. Roles are
checked inside every handler, not only on page load (DESIGN.md, "Security").
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

import reflex as rx

from dashboard import routes, runtime
from jobs.errors import PermissionDeniedError
from models.auth import (SESSION_TOKEN_NAME, authenticate, issue_token, revoke_token,
                         role_allows, user_for_token)
from models.enums import Role
from models.users import User

SESSION_DAYS = 7
SIGNED_OUT = "Your session has ended: sign in again."
BAD_CREDENTIALS = "Unknown user name or wrong password."


class AuthState(rx.State):
    """The signed-in operator of this browser (name and role shown; the token is the key)."""

    session_token: str = rx.Cookie("", name="observatory_session", max_age=SESSION_DAYS * 86400,
                                   same_site="strict")
    user_name: str = ""
    role: str = ""
    login_error: str = ""
    signing_in: bool = False

    @rx.var
    def signed_in(self) -> bool:
        return bool(self.user_name)

    @rx.var
    def can_operate(self) -> bool:
        """Retry, cancel, archive, pause (operator and admin)."""
        return bool(self.role) and role_allows(self.role, Role.OPERATOR)

    @rx.var
    def is_admin(self) -> bool:
        """Delete, re-sync, endpoint changes."""
        return bool(self.role) and role_allows(self.role, Role.ADMIN)

    async def _user(self) -> User | None:
        if not self.session_token:
            return None
        await runtime.ensure_db()
        return await user_for_token(self.session_token)

    def _show(self, user: User | None) -> None:
        self.user_name = user.name if user else ""
        self.role = user.role.value if user else ""

    @rx.event
    async def require_login(self) -> Any:
        """Page-load guard: a session without a valid sign-in goes to the login page."""
        user = await self._user()
        self._show(user)
        if user is None:
            return rx.redirect(f"{routes.LOGIN}?next={quote(self.router.url.path or '/')}")
        return None

    @rx.event
    async def login(self, form: dict[str, Any]) -> AsyncIterator[Any]:
        """Check the name and password; on success keep a session token and go on."""
        name = str(form.get("name", "")).strip()
        password = str(form.get("password", ""))
        if not name or not password:
            self.login_error = "Enter your user name and password."
            return
        self.signing_in = True
        yield
        await runtime.ensure_db()
        user = await authenticate(name, password)
        self.signing_in = False
        if user is None:
            self.login_error = BAD_CREDENTIALS
            return
        self.login_error = ""
        self.session_token = await issue_token(user, SESSION_TOKEN_NAME)
        self._show(user)
        yield rx.redirect(_safe_next(self.router.url.query_parameters.get("next")))

    @rx.event
    async def logout(self) -> Any:
        """Revoke this browser's session token and go to the login page."""
        if self.session_token:
            await runtime.ensure_db()
            await revoke_token(self.session_token)
        self.session_token = ""
        self._show(None)
        return rx.redirect(routes.LOGIN)


def _safe_next(target: Any) -> str:
    """Only a path of this site (never `//evil.example` or `https://...`): no open redirect."""
    if isinstance(target, list):
        target = target[0] if target else ""
    target = str(target or "")
    parts = urlsplit(target)
    if not target.startswith("/") or target.startswith("//") or parts.scheme or parts.netloc:
        return routes.HOME
    return target


async def current_actor(state: rx.State, minimum: Role = Role.VIEWER) -> str:
    """The signed-in user's name, if their role allows `minimum`; the actor for audit rows.

    Args:
        state: Any state of the session (the handler's own `self`).
        minimum: The least role the action needs (DLQ retry: operator; delete: admin).

    Raises:
        PermissionDeniedError: nobody is signed in (any more), or the role is too low; the
            handler reports it like any refused operation and changes nothing.
    """
    auth = await state.get_state(AuthState)
    user = await auth._user()
    auth._show(user)
    if user is None:
        raise PermissionDeniedError(SIGNED_OUT)
    if not role_allows(user.role, minimum):
        raise PermissionDeniedError(
            f"Role '{user.role.value}' may not do this; it needs '{minimum.value}' or higher")
    return user.name


async def signed_in(state: rx.State) -> bool:
    """Whether this session has a valid sign-in (page loads skip their data otherwise)."""
    auth = await state.get_state(AuthState)
    user = await auth._user()
    auth._show(user)
    return user is not None
