"""Endpoints view: state handlers on the real database, and rendering of its pieces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest_asyncio
import reflex as rx

from dashboard import routes, runtime
from dashboard.components.bulk import operation_card
from dashboard.components.endpoints import endpoint_row, resync_dialog, retry_config_editor
from dashboard.components.shell import header
from dashboard.pages.endpoints import endpoints_page
from dashboard.state.bulk import finished_summary, load_operations
from dashboard.state.endpoints import (EndpointsState, endpoint_item, form_values,
                                       no_errors)
from jobs.operations import bulk
from jobs.operations.endpoints import list_endpoints_overview
from jobs.policy import DEFAULT_POLICY
from models.audit import AuditLog
from models.bulk import BulkOperation
from models.dlq_filter import DlqFilter
from models.deliveries import Delivery, Message
from models.endpoints import Application, Endpoint
from models.enums import BulkKind, DeliveryStatus
from tests.factories import FAST_POLICY, make_dead_letter, make_endpoint
from tests.dashboard.sessions import actor_of, signed_in

URL = "http://127.0.0.1:9/hook"


@pytest_asyncio.fixture
async def backend(db: str) -> AsyncIterator[None]:
    yield
    await runtime.close()


async def loaded() -> tuple[rx.State, EndpointsState]:
    """A fresh session after the page load, with its delta cleared."""
    root = await signed_in()
    state = await root.get_state(EndpointsState)
    await state.load()
    root._clean()
    return root, state


async def run(handler: Any) -> list[Any]:
    return [item async for item in handler]


def toasts(items: list[Any]) -> str:
    return " ".join(str(item) for item in items if item is not None)


def row_of(state: EndpointsState, endpoint_id: int) -> dict[str, Any]:
    [row] = [dict(r) for r in state.endpoints if r["id"] == endpoint_id]
    return row


async def test_page_load_lists_endpoints_with_health_load_and_success_labels(backend):
    shop = await Application.create(name="shop")
    ok = await make_endpoint(URL, app=shop, retry_config=None)
    failing = await make_endpoint("http://127.0.0.1:9/b", app=shop,
                                  failing_since=datetime(2025, 5, 4, 13, 2, 11, tzinfo=UTC))
    await make_endpoint("http://127.0.0.1:9/c", enabled=False, disabled_reason="gone")
    message = await Message.create(app=shop, event_type="order.paid", payload={})
    now = datetime.now(UTC)
    await Delivery.create(message=message, endpoint=ok, status=DeliveryStatus.RUNNING)
    for status in (DeliveryStatus.SUCCEEDED, DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED):
        await Delivery.create(message=message, endpoint=ok, status=status, finished_at=now)

    _, state = await loaded()

    assert (state.app_count, state.failing_count, state.disabled_count) == (2, 1, 1)
    a = row_of(state, ok.id)
    assert (a["health_label"], a["in_flight"], a["success_label"]) == ("Healthy", 1, "67 % of 3")
    assert a["events_label"] == "All events" and a["retry_is_default"] is True
    assert row_of(state, failing.id)["health_label"] == "Failing since May 04 13:02:11"
    off = [r for r in state.endpoints if r["health"] == "disabled"][0]
    assert (off["health_label"], off["reason_label"], off["success_label"]) == (
        "Disabled", "gone", "—")
    assert state.refreshed_at != ""


async def test_disable_asks_for_a_reason_then_disables_and_audits(backend):
    endpoint = await make_endpoint(URL)
    root, state = await loaded()

    state.ask_disable(endpoint.id)
    assert (state.disable_id, state.disable_url) == (endpoint.id, URL)
    assert (await Endpoint.get(id=endpoint.id)).enabled is True  # nothing until confirmed
    state.set_disable_reason("receiver migrating")
    handler = state.confirm_disable()
    await anext(handler)  # the button is busy before the round trip
    assert state.busy == [endpoint.id]
    items = await run(handler)

    assert "Endpoint disabled" in toasts(items)
    assert (state.disable_id, state.busy) == (0, [])
    assert row_of(state, endpoint.id)["health"] == "disabled"
    stored = await Endpoint.get(id=endpoint.id)
    assert (stored.enabled, stored.disabled_reason) == (False, "receiver migrating")
    [audit] = await AuditLog.all()
    assert (audit.action, audit.actor) == ("endpoint.disable", actor_of("admin"))


async def test_blank_reason_keeps_the_dialog_open_with_the_error(backend):
    endpoint = await make_endpoint(URL)
    _, state = await loaded()
    state.ask_disable(endpoint.id)
    state.set_disable_reason("   ")

    items = await run(state.confirm_disable())

    assert toasts(items) == ""
    assert state.disable_id == endpoint.id and "say why" in state.disable_error
    assert state.busy == []
    assert (await Endpoint.get(id=endpoint.id)).enabled is True
    assert not await AuditLog.exists()


async def test_enable_re_enables_and_a_refusal_toasts_the_reason(backend):
    endpoint = await make_endpoint(URL, enabled=False, disabled_reason="gone",
                                   consecutive_failures=9)
    _, first = await loaded()
    _, other_tab = await loaded()

    items = await run(first.enable(endpoint.id))
    assert "Endpoint enabled" in toasts(items)
    assert row_of(first, endpoint.id)["health"] == "healthy"
    stored = await Endpoint.get(id=endpoint.id)
    assert (stored.enabled, stored.consecutive_failures) == (True, 0)

    refused = await run(other_tab.enable(endpoint.id))
    assert "Could not enable the endpoint" in toasts(refused)
    assert "already enabled" in toasts(refused) and '"error"' in toasts(refused)
    assert row_of(other_tab, endpoint.id)["health"] == "healthy"  # reloaded: the truth
    assert other_tab.busy == []
    assert await AuditLog.filter(action="endpoint.enable").count() == 1


async def test_retry_editor_shows_inline_errors_and_saves_nothing_until_valid(backend):
    endpoint = await make_endpoint(URL)  # FAST_POLICY
    root, state = await loaded()

    await run(state.open_retry_editor(endpoint.id))
    assert state.editor_id == endpoint.id and state.editor_is_default is False
    assert state.retry_form == {"max_retries": "2", "backoff": "fixed", "base_delay": "1",
                                "max_delay": "1"}

    state.set_retry_field("max_retries", "12")
    state.set_retry_field("base_delay", "30")  # now above max_delay (1)
    assert "less than or equal to 10" in state.retry_errors["max_retries"]
    assert state.retry_errors["max_delay"] == ""  # the cross-field rule runs once fields pass
    assert state.has_retry_errors
    items = await run(state.save_retry_config())
    assert "Retry policy not saved" in toasts(items)
    assert state.editor_id == endpoint.id  # still open, errors still inline
    assert "less than or equal to 10" in state.retry_errors["max_retries"]

    state.set_retry_field("max_retries", "4")
    assert state.retry_errors["max_delay"] == "max_delay must be >= base_delay"
    assert (await Endpoint.get(id=endpoint.id)).retry_config == FAST_POLICY
    assert not await AuditLog.exists()

    state.set_retry_field("max_delay", "600")
    state.set_retry_jitter(True)
    assert not state.has_retry_errors
    items = await run(state.save_retry_config())
    assert "Retry policy saved" in toasts(items)
    assert state.editor_id == 0
    expected = {"max_retries": 4, "backoff": "fixed", "base_delay": 30.0, "max_delay": 600.0,
                "jitter": True}
    assert (await Endpoint.get(id=endpoint.id)).retry_config == expected
    assert row_of(state, endpoint.id)["retry_summary"] == "4 retries · fixed 30 s · jitter"
    [audit] = await AuditLog.all()
    assert (audit.action, audit.actor) == ("endpoint.retry_config", actor_of("admin"))


async def test_retry_editor_resets_to_the_default_policy(backend):
    endpoint = await make_endpoint(URL)
    _, state = await loaded()
    await run(state.open_retry_editor(endpoint.id))
    items = await run(state.reset_retry_config())
    assert "reset to the default" in toasts(items)
    assert (await Endpoint.get(id=endpoint.id)).retry_config is None
    assert row_of(state, endpoint.id)["retry_is_default"] is True
    await run(state.open_retry_editor(endpoint.id))
    assert state.editor_is_default is True
    assert state.retry_form == form_values(DEFAULT_POLICY.model_dump())


async def test_unknown_form_field_is_ignored(backend):
    endpoint = await make_endpoint(URL)
    _, state = await loaded()
    await run(state.open_retry_editor(endpoint.id))
    before = dict(state.retry_form)
    state.set_retry_field("secret", "x")
    assert state.retry_form == before


async def test_editor_for_a_deleted_endpoint_toasts_not_found(backend):
    endpoint = await make_endpoint(URL)
    _, state = await loaded()
    await Endpoint.filter(id=endpoint.id).delete()
    items = await run(state.open_retry_editor(endpoint.id))
    assert "does not exist" in toasts(items) and state.editor_id == 0


# -- rendering ---------------------------------------------------------------------------------

def test_retry_config_editor_renders_an_inline_error_under_its_field():
    errors = no_errors() | {"max_delay": "max_delay must be >= base_delay"}
    values = {"max_retries": "3", "backoff": "fixed", "base_delay": "30", "max_delay": "10"}

    html = str(retry_config_editor(values, True, errors))

    assert '"max_delay must be >= base_delay"' in html
    assert 'id:"retry-error-max_delay"' in html and 'className:"field-error"' in html
    assert html.count("field-error") == 1  # no empty error slots for the valid fields
    assert 'value:(isNotNullOrUndefined("30")' in html and '"aria-invalid":"true"' in html
    assert 'htmlFor:"retry-max_delay"' in html
    assert "disabled:true" in html  # Save stays disabled while a field is invalid


async def test_editor_renders_the_errors_the_state_computed(backend):
    endpoint = await make_endpoint(URL)
    _, state = await loaded()
    await run(state.open_retry_editor(endpoint.id))
    state.set_retry_field("backoff", "random")

    html = str(retry_config_editor(state.retry_form, state.retry_jitter, state.retry_errors))

    assert 'id:"retry-error-backoff"' in html
    assert "Input should be 'fixed', 'linear' or 'exponential'" in html


async def test_rows_offer_disable_or_enable_by_state(backend):
    on = await make_endpoint(URL)
    off = await make_endpoint("http://127.0.0.1:9/off", enabled=False, disabled_reason="gone")
    rows = {row["id"]: endpoint_item(row) for row in await list_endpoints_overview()}

    on_html = str(endpoint_row(rows[on.id]))
    off_html = str(endpoint_row(rows[off.id]))

    assert f'"aria-label":"Disable endpoint {on.id}"' in on_html
    assert "Enable endpoint" not in on_html
    assert "health-badge-healthy" in on_html
    assert f'"aria-label":"Enable endpoint {off.id}"' in off_html
    assert "health-badge-disabled" in off_html and '"gone"' in off_html


def test_endpoints_page_renders_and_is_in_the_navigation_after_scheduler():
    assert [item.route for item in routes.NAV][:2] == [routes.SCHEDULER, routes.ENDPOINTS]
    assert 'to:"/endpoints"' in str(header(routes.ENDPOINTS))
    html = str(endpoints_page())
    assert 'id:"endpoints-panel"' in html and 'id:"retry-config-editor"' in html
    assert "Disable endpoint?" in html


# -- re-sync -----------------------------------------------------------------------------------

@pytest_asyncio.fixture
async def with_redis(db: str, redis: Any) -> AsyncIterator[Any]:
    yield redis
    await runtime.close()


async def _received(endpoint: Endpoint, n: int, age_days: float = 0) -> list[Message]:
    """`n` messages the endpoint received (created `age_days` ago)."""
    messages = []
    for _ in range(n):
        message = await Message.create(app_id=endpoint.app_id, event_type="order.paid",  # type: ignore[attr-defined]
                                       payload={})
        if age_days:
            await Message.filter(id=message.id).update(
                created_at=datetime.now(UTC) - timedelta(days=age_days))
        await Delivery.create(message=message, endpoint=endpoint,
                              status=DeliveryStatus.SUCCEEDED)
        messages.append(message)
    return messages


async def test_resync_confirms_the_count_narrows_by_date_and_starts(with_redis):
    endpoint = await make_endpoint(URL)
    await _received(endpoint, 2, age_days=10)
    recent = await _received(endpoint, 3, age_days=1)
    _, state = await loaded()

    await run(state.ask_resync(endpoint.id))
    assert (state.resync_id, state.resync_url, state.resync_total) == (endpoint.id, URL, 5)
    assert not await BulkOperation.exists()  # nothing until confirmed
    since = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()
    await run(state.set_resync_since(since))
    assert (state.resync_total, state.resync_snapshot) == (3, recent[-1].id)
    await _received(endpoint, 1)  # published while the dialog is open: not included
    state.set_resync_reason("receiver restored")
    items = await run(state.confirm_resync())

    assert "Re-sync started" in toasts(items) and "re-sending 3 messages" in toasts(items)
    assert state.resync_id == 0
    op = await BulkOperation.get()
    assert (op.kind, op.total, op.actor, op.reason) == (
        BulkKind.RESYNC, 3, actor_of("admin"), "receiver restored")
    assert op.scope == {"endpoint_id": endpoint.id, "max_id": recent[-1].id,
                        "since": f"{since}T00:00:00+00:00"}
    [card] = await load_operations()
    assert (card["title"], card["kind"], card["total"]) == (f"Re-sync #{op.id}", "resync", 3)
    assert f"Re-sync #{op.id}" in str(operation_card(card))


async def test_resync_is_refused_to_operators_and_for_disabled_endpoints(with_redis):
    endpoint = await make_endpoint(URL)
    off = await make_endpoint("http://127.0.0.1:9/off", enabled=False, disabled_reason="gone")
    await _received(endpoint, 1)
    await _received(off, 1)
    operator = await (await signed_in("operator")).get_state(EndpointsState)
    _, admin = await loaded()

    refused = await run(operator.ask_resync(endpoint.id))
    assert "Re-sync is not possible" in toasts(refused) and operator.resync_id == 0
    disabled = await run(admin.ask_resync(off.id))
    assert f"endpoint {off.id} is disabled (gone)" in toasts(disabled) and admin.resync_id == 0
    operator.resync_id, operator.resync_total = endpoint.id, 1  # a forged confirmation
    forged = await run(operator.confirm_resync())
    assert "Re-sync was not started" in toasts(forged)
    assert not await BulkOperation.exists() and not await AuditLog.exists()


async def test_a_bad_since_date_or_a_missing_reason_keeps_the_dialog_open(with_redis,
                                                                          monkeypatch):
    endpoint = await make_endpoint(URL)
    await _received(endpoint, 2)
    _, state = await loaded()
    await run(state.ask_resync(endpoint.id))

    await run(state.set_resync_since("01/05/2025"))
    assert "since: must be a date" in state.resync_error and state.resync_id == endpoint.id
    await run(state.set_resync_since(""))
    assert (state.resync_error, state.resync_total) == ("", 2)
    monkeypatch.setenv("OBSERVATORY_REQUIRE_REASON", "1")
    items = await run(state.confirm_resync())

    assert toasts(items) == "" and state.resync_error == "required for this action"
    assert state.resync_id == endpoint.id and not state.resync_starting
    assert not await BulkOperation.exists()


async def test_cards_are_titled_by_kind(with_redis):
    endpoint = await make_endpoint(URL)
    for _ in range(2):
        await make_dead_letter(endpoint)
    archived = await bulk.start_archive_all(DlqFilter(), "olga", redis=with_redis)
    deleted = await bulk.start_delete_all(DlqFilter(endpoint_id=endpoint.id), "root",
                                          redis=with_redis)

    cards = {c["id"]: c for c in await load_operations()}

    archive, delete = cards[archived["operation_id"]], cards[deleted["operation_id"]]
    assert archive["title"] == f"Archive #{archived['operation_id']}"
    assert archive["scope_label"] == "every active or resolved entry"
    assert archive["figures_label"] == "0 archived · 0 cancelled · 0 skipped"
    assert delete["title"] == f"Delete #{deleted['operation_id']}"
    assert delete["scope_label"].startswith(f"endpoint id {endpoint.id}")
    done = {**delete, "state": "completed", "succeeded": 2}
    assert finished_summary(done) == f"Delete #{deleted['operation_id']} complete: 2 deleted"


async def test_rows_offer_resync_only_while_enabled(backend):
    on = await make_endpoint(URL)
    off = await make_endpoint("http://127.0.0.1:9/off", enabled=False, disabled_reason="gone")
    rows = {row["id"]: endpoint_item(row) for row in await list_endpoints_overview()}

    on_html = str(endpoint_row(rows[on.id]))
    off_html = str(endpoint_row(rows[off.id]))

    assert f'"aria-label":"Re-sync endpoint {on.id}"' in on_html
    assert _resync_disabled(on_html) is False and _resync_disabled(off_html) is True
    html = str(resync_dialog(True, URL, 3, "2025-05-01", "", ""))
    assert "Re-send 3 messages?" in html and 'id:"resync-since"' in html
    assert '"2025-05-01"' in html


def _resync_disabled(html: str) -> bool:
    """Whether the Re-sync button of a statically rendered row is disabled."""
    at = html.index("endpoint-resync-button")
    return "disabled:true" in html[html.rindex("jsx(", 0, at):html.index("}", at)]
