"""The Audit log page: filters, cursor paging and who may read it, on the real database; and
rendering of its pieces."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
import reflex as rx

from dashboard import routes, runtime
from dashboard.components.audit import audit_filters, audit_row, audit_table
from dashboard.components.shell import header
from dashboard.pages.audit import audit_page
from dashboard.state.audit import EMPTY_FORM, PAGE_SIZE, AuditState, audit_item
from dashboard.state.session import AuthState
from jobs.audit import record
from models import queries
from tests.dashboard.sessions import signed_in


@pytest_asyncio.fixture
async def backend(db: str, redis: Any) -> AsyncIterator[Any]:
    yield redis
    await runtime.close()


async def page_state(role: str = "viewer") -> AuditState:
    """A signed-in session after the page load."""
    state = await (await signed_in(role)).get_state(AuditState)
    await state.load()
    return state


def ids(state: AuditState) -> list[int]:
    return [row["id"] for row in state.rows]


async def apply(state: AuditState, **values: str) -> None:
    for name, value in values.items():
        state.set_filter(name, value)
    await state.apply()


async def seed() -> dict[str, int]:
    """Three actions by two actors on two target types; ids by a short name."""
    rows = {
        "retry": await record("alice", "dlq.retry", "dead_letter", 12, original_delivery_id=3,
                              new_delivery_id=40),
        "archive": await record("bob", "dlq.archive", "dead_letter", 13, reason="receiver gone"),
        "bulk": await record("alice", "dlq.retry_all", "bulk_operation", 5, total=23),
        "role": await record("cli:root", "user.set_role", "user", "bob",
                             **{"from": "viewer", "to": "operator"}),
    }
    return {name: row.id for name, row in rows.items()}


async def test_load_shows_every_row_newest_first_with_compact_details(backend):
    made = await seed()
    state = await page_state()

    assert ids(state) == [made["role"], made["bulk"], made["archive"], made["retry"]]
    retry = state.rows[-1]
    assert retry["actor"] == "alice" and retry["action"] == "dlq.retry"
    assert retry["target"] == "dead_letter #12"
    assert retry["details"] == '{"new_delivery_id":40,"original_delivery_id":3}'
    assert json.loads(state.rows[0]["details"]) == {"from": "viewer", "to": "operator"}
    assert state.loaded and state.next_cursor == 0 and state.page_number == 1


async def test_each_filter_narrows_the_page_and_they_combine(backend):
    made = await seed()
    state = await page_state()

    await apply(state, action="dlq.retry")  # exact: not dlq.retry_all
    assert ids(state) == [made["retry"]]
    await apply(state, action="", actor="alice")
    assert ids(state) == [made["bulk"], made["retry"]]
    await apply(state, target_type="dead_letter")
    assert ids(state) == [made["retry"]]
    await apply(state, actor="", target_type="user")
    assert ids(state) == [made["role"]] and state.filtered
    await apply(state, target_type="nothing")
    assert ids(state) == []
    await state.reset_filters()
    assert len(state.rows) == 4 and state.form == EMPTY_FORM and not state.filtered


async def test_clicking_an_actor_shows_only_that_actors_rows(backend):
    made = await seed()
    state = await page_state()

    await state.filter_by("actor", "bob")

    assert ids(state) == [made["archive"]] and state.form["actor"] == "bob"


async def test_a_too_long_filter_is_named_and_nothing_new_is_loaded(backend):
    await seed()
    state = await page_state()

    await apply(state, target_type="x" * 51, actor="alice")

    assert state.errors["target_type"] == "Target type: at most 50 characters"
    assert state.errors["actor"] == ""
    assert len(state.rows) == 4 and state.applied == EMPTY_FORM  # the page shown stays
    state.set_filter("target_type", "user")  # typing again clears the message
    assert state.errors["target_type"] == ""


async def test_next_and_previous_walk_cursor_pages_of_fifty(backend):
    made = [(await record("alice", "dlq.retry", "dead_letter", n)).id for n in range(120)]
    newest_first = made[::-1]
    state = await page_state()
    assert ids(state) == newest_first[:PAGE_SIZE] and state.next_cursor == newest_first[49]

    await state.next_page()
    assert ids(state) == newest_first[50:100] and state.page_number == 2
    news = await record("bob", "dlq.archive", "dead_letter", 999)  # written meanwhile
    await state.next_page()
    assert ids(state) == newest_first[100:] and state.next_cursor == 0
    await state.next_page()  # no further page: nothing moves
    assert state.page_number == 3
    await state.previous_page()
    assert ids(state) == newest_first[50:100]
    await state.previous_page()  # the news shows on the first page, never mid-walk
    assert ids(state) == [news.id, *newest_first[:PAGE_SIZE - 1]] and state.previous == []
    await state.previous_page()
    assert state.page_number == 1

    await apply(state, actor="bob")  # a new filter starts on page 1
    assert len(state.rows) == 1 and state.page_number == 1 and state.next_cursor == 0


async def test_every_role_may_read_the_log(backend):
    made = await seed()
    for role in ("viewer", "operator", "admin"):
        assert ids(await page_state(role))[-1] == made["retry"], role


async def test_a_signed_out_session_reads_nothing(backend):
    await seed()
    state = await rx.State().get_state(AuditState)

    await state.load()
    await state.apply()
    await state.filter_by("actor", "alice")

    assert not state.loaded and state.rows == []
    assert not (await state.get_state(AuthState)).signed_in


# -- rendering --------------------------------------------------------------------------------

async def test_a_row_renders_its_values_and_details(backend):
    made = await seed()
    row = (await queries.audit_page(actor="bob"))["entries"][0]
    rendered = str(audit_row(audit_item(row)))

    assert f"audit-row-{made['archive']}" in rendered
    for needle in ("bob", "dlq.archive", "dead_letter #13", "receiver gone"):
        assert needle in rendered, needle


def test_filters_show_each_error_under_its_field():
    errors = EMPTY_FORM | {"actor": "Actor: at most 200 characters"}
    rendered = str(audit_filters(EMPTY_FORM, errors))
    assert "audit-filter-error-actor" in rendered and "at most 200 characters" in rendered
    assert "audit-filter-error-action" not in rendered
    for field in ("action", "actor", "target_type"):
        assert f"audit-filter-{field}" in rendered


def test_an_empty_table_says_so():
    assert "No audit row matches these filters." in str(audit_table([]))


def test_page_and_navigation_render():
    page = str(audit_page())
    for needle in ("audit-filters", "audit-table", "audit-page-next", "audit-page-previous",
                   "audit-page-number", "audit-refresh"):
        assert needle in page, needle
    nav = str(header(routes.AUDIT))
    assert "Audit log" in nav and routes.AUDIT in nav
    assert routes.NAV[-1].route == routes.AUDIT
