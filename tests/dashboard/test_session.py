"""Dashboard sign-in: the login page's handler, the page-load guard, roles inside handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
import reflex as rx

from dashboard import runtime
from dashboard.state.dead_letters import DeadLetterState
from dashboard.state.scheduler import SchedulerState
from dashboard.state.session import (BAD_CREDENTIALS, SIGNED_OUT, AuthState, _safe_next,
                                     current_actor)
from jobs.errors import PermissionDeniedError
from models.audit import AuditLog
from models.auth import create_user
from models.dead_letters import DeadLetter
from models.enums import DeadLetterStatus, Role
from models.users import ApiToken
from tests.dashboard.sessions import signed_in
from tests.dashboard.test_scheduler_state import make_dead_letter


@pytest_asyncio.fixture
async def backend(db: str, redis: Any) -> AsyncIterator[Any]:
    yield redis
    await runtime.close()


async def drive(handler: Any) -> list[Any]:
    """Run an event handler (plain coroutine or async generator); what it returned/yielded."""
    if hasattr(handler, "__aiter__"):
        return [item async for item in handler]
    return [await handler]


async def test_wrong_password_shows_an_error_and_keeps_no_session(backend):
    await create_user("ops", "operator", password="correct horse")
    auth = await rx.State().get_state(AuthState)

    await drive(auth.login({"name": "ops", "password": "wrong"}))

    assert auth.login_error == BAD_CREDENTIALS
    assert auth.session_token == "" and not auth.signed_in
    assert await ApiToken.filter(name="dashboard-session").count() == 0


async def test_empty_form_asks_for_both_fields(backend):
    auth = await rx.State().get_state(AuthState)
    await drive(auth.login({"name": " ", "password": ""}))
    assert auth.login_error == "Enter your user name and password."


async def test_sign_in_keeps_a_session_token_then_sign_out_revokes_it(backend):
    await create_user("ops", "operator", password="correct horse")
    root = rx.State()
    auth = await root.get_state(AuthState)

    items = await drive(auth.login({"name": "ops", "password": "correct horse"}))

    assert auth.login_error == "" and auth.signed_in
    assert (auth.user_name, auth.role, auth.can_operate, auth.is_admin) == (
        "ops", "operator", True, False)
    assert auth.session_token.startswith("obs_")
    assert any("/" in str(item) for item in items if item is not None)  # redirected home
    assert await current_actor(root, Role.OPERATOR) == "ops"

    await drive(auth.logout())

    assert auth.session_token == "" and not auth.signed_in
    assert await ApiToken.filter(name="dashboard-session").count() == 0
    try:
        await current_actor(root)
    except PermissionDeniedError as exc:
        assert exc.message == SIGNED_OUT
    else:
        raise AssertionError("a signed-out session still acted")


async def test_page_guard_redirects_without_a_session_and_loads_nothing(backend):
    await make_dead_letter()
    root = rx.State()
    auth = await root.get_state(AuthState)

    result = await auth.require_login()
    await (await root.get_state(SchedulerState)).load()

    assert "/login?next=" in str(result)
    assert (await root.get_state(DeadLetterState)).entries == []  # no rows without a sign-in


async def test_page_guard_lets_a_signed_in_session_through(backend):
    root = await signed_in("viewer")
    auth = await root.get_state(AuthState)
    assert await auth.require_login() is None
    assert (auth.user_name, auth.role) == ("viewer-user", "viewer")


async def test_a_revoked_token_stops_the_next_click(backend):
    root = await signed_in("operator")
    await ApiToken.filter(name="dashboard-session").delete()  # an admin revoked it
    try:
        await current_actor(root, Role.OPERATOR)
    except PermissionDeniedError:
        pass
    else:
        raise AssertionError("a revoked session token still acted")


async def test_viewer_cannot_retry_from_the_dashboard_and_nothing_changes(backend):
    dead = await make_dead_letter()
    root = await signed_in("viewer")
    await (await root.get_state(SchedulerState)).load()
    dlq = await root.get_state(DeadLetterState)

    items = await drive(dlq.retry_dlq_entry(dead.id))

    toasts = [str(item) for item in items if item is not None]
    assert len(toasts) == 1 and "needs 'operator'" in toasts[0]
    assert (await DeadLetter.get(id=dead.id)).status == DeadLetterStatus.ACTIVE
    assert await AuditLog.filter(action="dlq.retry").count() == 0
    assert dlq.in_flight == []


def test_next_target_is_only_ever_a_path_of_this_site():
    assert _safe_next("/endpoints") == "/endpoints"
    assert _safe_next(["/scheduler"]) == "/scheduler"
    for hostile in ("//evil.example/x", "https://evil.example", "javascript:alert(1)", "", None):
        assert _safe_next(hostile) == "/"
