"""The DLQ page: filters, cursor paging, entry detail and actions by role on the real database
and Redis, and rendering of its pieces."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
import reflex as rx

from dashboard import routes, runtime
from dashboard.components.dlq_page import (confirm_action_dialog, detail_dialog, entry_row,
                                           export_menu, filter_bar, sandbox_dialog,
                                           stats_strip)
from dashboard.components.shell import header
from dashboard.pages.dlq import dlq_page
from dashboard.state import dlq_export
from dashboard.state.bulk import BulkRetryState
from dashboard.state.dlq_page import (DEFAULT_FORM, PAGE_SIZE, DlqPageState, FormError,
                                      build_filter, sandbox_overrides)
from dashboard.state.rows import dead_letter_item
from dashboard.state.scheduler import SchedulerState
from dashboard.state.session import AuthState
from models import queries
from models.auth import revoke_token
from models.audit import AuditLog
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery
from models.endpoints import Endpoint
from models.enums import DeadLetterStatus
from tests.dashboard.sessions import actor_of, signed_in
from tests.factories import make_dead_letter, make_endpoint

S = DeadLetterStatus
URL = "http://127.0.0.1:9/hook"


@pytest_asyncio.fixture
async def backend(db: str, redis: Any) -> AsyncIterator[Any]:
    yield redis
    await runtime.close()


async def page_state(role: str = "operator") -> DlqPageState:
    """A signed-in session after the page load."""
    root = await signed_in(role)
    state = await root.get_state(DlqPageState)
    await state.load()
    return state


async def run(handler: Any) -> list[Any]:
    return [item async for item in handler]


def toasts(items: list[Any]) -> str:
    return " ".join(str(item) for item in items if item is not None)


def ids(state: DlqPageState) -> list[int]:
    return [row["id"] for row in state.rows]


async def entry(endpoint: Endpoint, status: S = S.ACTIVE, *, event_type: str = "order.created",
                created_at: datetime | None = None) -> DeadLetter:
    dead = await make_dead_letter(endpoint, status=status, event_type=event_type)
    if created_at is not None:
        await DeadLetter.filter(id=dead.id).update(created_at=created_at)
    return dead


async def apply(state: DlqPageState, **values: str) -> None:
    for name, value in values.items():
        state.set_filter(name, value)
    await state.apply()


# -- filters ----------------------------------------------------------------------------------

async def test_load_lists_open_entries_newest_first_with_totals_of_every_status(backend):
    endpoint = await make_endpoint(URL)
    made = {status: await entry(endpoint, status) for status in S}
    state = await page_state()

    assert ids(state) == [made[S.RETRYING].id, made[S.ACTIVE].id]  # failed + queued
    assert state.by_status == {"active": 1, "retrying": 1, "resolved": 1, "archived": 1}
    assert state.total == 4 and state.scope == {}
    assert state.next_cursor == 0 and state.page_number == 1


async def test_each_filter_narrows_the_page(backend):
    shop, blog = await make_endpoint(URL), await make_endpoint("http://127.0.0.1:9/blog")
    old = await entry(shop, created_at=datetime(2024, 5, 1, 12, tzinfo=UTC))
    paid = await entry(shop, event_type="order.paid")
    other = await entry(blog)
    archived = await entry(blog, S.ARCHIVED)
    state = await page_state()

    await apply(state, event_type="order.paid")
    assert ids(state) == [paid.id]
    await apply(state, event_type="", endpoint_id=str(blog.id))
    assert ids(state) == [other.id]
    assert state.scope == {"endpoint_id": blog.id}  # what Retry all matching acts on
    await apply(state, status="archived")
    assert ids(state) == [archived.id]
    await apply(state, status="all")
    assert ids(state) == [archived.id, other.id]
    await apply(state, status="open", endpoint_id="", app_id=str(shop.app_id))  # type: ignore[attr-defined]
    assert ids(state) == [paid.id, old.id]
    await apply(state, app_id="", since="2024-05-01", until="2024-05-01")  # one day, inclusive
    assert ids(state) == [old.id]
    await apply(state, since="", until="", q="blog")  # text in the endpoint URL
    assert ids(state) == [other.id]
    assert state.by_status["archived"] == 1  # totals of the filter, whatever the status


async def test_bad_filters_are_named_inline_and_nothing_new_is_loaded(backend):
    endpoint = await make_endpoint(URL)
    first = await entry(endpoint)
    state = await page_state()
    await entry(endpoint)  # arrives meanwhile: a reload would show it

    await apply(state, endpoint_id="abc", since="2024-05-03", until="2024-05-01")

    assert state.filter_errors["endpoint_id"] == "Endpoint id: must be a whole number"
    assert state.filter_errors["until"] == "Until: must be on or after since"
    assert state.has_filter_errors
    assert ids(state) == [first.id] and state.applied == DEFAULT_FORM
    state.set_filter("endpoint_id", "0")
    await state.apply()
    assert state.filter_errors["endpoint_id"] == "Endpoint id: must be 1 or more"
    assert ids(state) == [first.id]


async def test_submitted_form_values_win_and_reset_goes_back_to_open_entries(backend):
    endpoint = await make_endpoint(URL)
    active, archived = await entry(endpoint), await entry(endpoint, S.ARCHIVED)
    state = await page_state()
    await state.apply({"status": "archived", "endpoint_id": str(endpoint.id), "ignored": "x"})
    assert ids(state) == [archived.id] and state.form["status"] == "archived"
    await state.reset_filters()
    assert ids(state) == [active.id] and state.form == DEFAULT_FORM == state.applied


def test_build_filter_reads_dates_as_whole_days_and_refuses_unknown_statuses():
    f = build_filter({**DEFAULT_FORM, "since": "2024-05-01", "until": "2024-05-02"})
    assert (f.since, f.until) == (datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC))
    assert f.status is None  # the listing's default: active and retrying
    with pytest.raises(FormError) as refused:
        build_filter({**DEFAULT_FORM, "status": "gone", "since": "May 1st"})
    assert refused.value.errors["status"].startswith("Status: must be one of open")


# -- paging -----------------------------------------------------------------------------------

async def test_next_and_previous_walk_cursor_pages_of_fifty(backend):
    endpoint = await make_endpoint(URL)
    made = [(await entry(endpoint)).id for _ in range(120)]
    newest_first = made[::-1]
    state = await page_state()
    assert ids(state) == newest_first[:PAGE_SIZE] and state.next_cursor == newest_first[49]

    await state.next_page()
    assert ids(state) == newest_first[50:100] and state.page_number == 2
    await state.next_page()
    assert ids(state) == newest_first[100:] and state.next_cursor == 0
    await state.next_page()  # no further page: nothing moves
    assert state.page_number == 3
    await state.previous_page()
    assert ids(state) == newest_first[50:100]
    await state.previous_page()
    assert ids(state) == newest_first[:PAGE_SIZE] and state.previous == []
    await state.previous_page()
    assert state.page_number == 1

    await apply(state, q="no such text")  # a new filter starts on page 1
    assert ids(state) == [] and state.page_number == 1


# -- detail -----------------------------------------------------------------------------------

async def test_detail_shows_payload_headers_attempts_and_history_never_the_secret(backend):
    endpoint = await make_endpoint(URL)
    dead = await make_dead_letter(endpoint, payload={"order": 42, "note": "café"})
    delivery = await Delivery.get(id=dead.delivery_id)  # type: ignore[attr-defined]
    started = datetime(2024, 5, 4, 13, 2, 11, tzinfo=UTC)
    for n, code in ((1, 503), (2, None)):
        await Attempt.create(delivery=delivery, number=n, started_at=started + timedelta(seconds=n),
                             duration_ms=1234.0 if code else 12.0, status_code=code,
                             outcome="retryable", error_class="http_5xx" if code else "timeout",
                             error_message="HTTP 503" if code else "read timed out",
                             response_excerpt="down for maintenance" if code else None)
    state = await page_state("viewer")  # reading needs no more than a viewer

    await state.open_detail(dead.id)

    assert state.detail_id == dead.id and state.detail["event_type"] == "order.created"
    assert json.loads(state.detail_payload) == {"order": 42, "note": "café"}
    assert '\n  "order": 42' in state.detail_payload  # pretty
    headers = {h["name"]: h["value"] for h in state.detail_headers}
    assert headers["webhook-id"] == f"msg_{dead.message_id}"  # type: ignore[attr-defined]
    assert headers["content-type"] == "application/json"
    assert [(a["delivery"], a["number"], a["status_code"], a["duration"]) for a in
            state.detail_attempts] == [(f"original #{delivery.id}", 1, "503", "1.2 s"),
                                       (f"original #{delivery.id}", 2, "—", "12 ms")]
    assert state.detail_attempts[0]["error"] == "http_5xx · HTTP 503"
    assert state.detail_attempts[0]["response"] == "down for maintenance"
    assert [h["status_code"] for h in state.detail_history] == ["500", "500", "500"]
    assert endpoint.secret not in json.dumps(state.dict())
    state.close_detail()
    assert state.detail_id == 0


async def test_detail_of_a_deleted_entry_says_so_and_rereads_the_page(backend):
    dead = await entry(await make_endpoint(URL))
    state = await page_state()
    await DeadLetter.filter(id=dead.id).delete()
    refused = await state.open_detail(dead.id)
    assert "does not exist" in str(refused) and state.detail_id == 0 and ids(state) == []


# -- actions by role --------------------------------------------------------------------------

async def test_viewer_cannot_archive_retry_or_delete_and_nothing_changes(backend):
    dead = await entry(await make_endpoint(URL))
    state = await page_state("viewer")

    state.ask_archive(dead.id)
    archived = toasts(await run(state.confirm_archive()))
    retried = toasts(await run(state.retry(dead.id)))
    state.ask_delete(dead.id)
    deleted = toasts(await run(state.confirm_delete()))

    for refused in (archived, retried, deleted):
        assert "may not do this" in refused
    assert (await DeadLetter.get(id=dead.id)).status == S.ACTIVE
    assert await AuditLog.all().count() == 0
    assert ids(state) == [dead.id] and state.busy == [] and state.archive_id == 0


async def test_operator_archives_with_a_reason_and_the_row_leaves_the_open_list(backend):
    endpoint = await make_endpoint(URL)
    keep, dead = await entry(endpoint), await entry(endpoint)
    state = await page_state("operator")
    state.ask_archive(dead.id)
    assert state.confirm_label.startswith(f"#{dead.id} (order.created")
    state.set_reason("receiver retired")

    done = toasts(await run(state.confirm_archive()))

    assert "Entry archived" in done and state.archive_id == 0
    assert (await DeadLetter.get(id=dead.id)).status == S.ARCHIVED
    [audit] = await AuditLog.filter(action="dlq.archive")
    assert (audit.actor, audit.target_id, audit.details["reason"]) == (
        actor_of("operator"), str(dead.id), "receiver retired")
    assert ids(state) == [keep.id] and state.by_status["archived"] == 1


async def test_archive_refused_by_the_entry_state_toasts_and_rereads_the_row(backend):
    dead = await entry(await make_endpoint(URL))
    state = await page_state("operator")
    await DeadLetter.filter(id=dead.id).update(status=S.RETRYING)  # a retry started meanwhile
    state.ask_archive(dead.id)
    refused = toasts(await run(state.confirm_archive()))
    assert "Entry not archived" in refused and "cannot become archived" in refused
    assert [row["status"] for row in state.rows] == ["retrying"]
    assert not await AuditLog.exists(action="dlq.archive")


async def test_a_required_reason_keeps_the_confirmation_open(backend, monkeypatch):
    monkeypatch.setenv("OBSERVATORY_REQUIRE_REASON", "1")
    dead = await entry(await make_endpoint(URL))
    state = await page_state("admin")
    state.ask_delete(dead.id)
    assert toasts(await run(state.confirm_delete())) == ""
    assert state.delete_id == dead.id and state.reason_error.startswith("Reason: required")
    assert await DeadLetter.exists(id=dead.id)


async def test_operator_cannot_delete_and_admin_can_with_the_facts_audited(backend):
    dead = await entry(await make_endpoint(URL))
    operator = await page_state("operator")
    operator.ask_delete(dead.id)
    assert "needs 'admin'" in toasts(await run(operator.confirm_delete()))
    assert await DeadLetter.exists(id=dead.id)

    admin = await page_state("admin")
    admin.ask_delete(dead.id)
    admin.set_reason("test data")
    assert "Entry deleted" in toasts(await run(admin.confirm_delete()))

    assert not await DeadLetter.exists(id=dead.id) and ids(admin) == []
    [audit] = await AuditLog.filter(action="dlq.delete")
    assert audit.actor == actor_of("admin")
    assert (audit.details["reason"], audit.details["event_type"]) == ("test data", "order.created")


async def test_operator_retries_one_entry_from_the_page(backend):
    dead = await entry(await make_endpoint(URL))
    state = await page_state("operator")
    await state.open_detail(dead.id)
    done = toasts(await run(state.retry(dead.id)))
    assert "Retry queued" in done and state.detail_id == 0
    assert [row["status"] for row in state.rows] == ["retrying"]
    assert await AuditLog.filter(action="dlq.retry", actor=actor_of("operator")).count() == 1
    again = toasts(await run(state.retry(dead.id)))
    assert "Retry failed" in again and "already in flight" in again


# -- sandbox retry ----------------------------------------------------------------------------

SANDBOX_URL = "http://127.0.0.1:9/sandbox"


def test_sandbox_overrides_are_read_from_the_dialog_text_or_named_as_wrong():
    assert sandbox_overrides({"url": f" {SANDBOX_URL} ", "headers": "X-Debug: 1\n\nX-Run: a:b",
                              "payload": '{"amount": "0.01"}'}) == {
        "url": SANDBOX_URL, "headers": {"X-Debug": "1", "X-Run": "a:b"},
        "payload": {"amount": "0.01"}}
    with pytest.raises(FormError) as refused:
        sandbox_overrides({"url": "", "headers": "X-Debug 1", "payload": "[1]"})
    assert refused.value.errors == {
        "url": "URL: required (where the sandbox delivery goes)",
        "headers": 'Headers: line 1 must be "Name: value"',
        "payload": "Payload: must be a JSON object of the fields to replace"}
    with pytest.raises(FormError) as bad_json:
        sandbox_overrides({"url": SANDBOX_URL, "payload": "{oops"})
    assert bad_json.value.errors["payload"].startswith("Payload: not valid JSON")


async def test_operator_sends_a_sandbox_retry_and_the_entry_keeps_its_status(backend):
    dead = await entry(await make_endpoint(URL))
    state = await page_state("operator")
    await state.open_detail(dead.id)
    state.ask_sandbox(dead.id)
    assert state.sandbox_id == dead.id and state.detail_id == 0
    state.set_sandbox_field("url", SANDBOX_URL)
    state.set_sandbox_field("headers", "X-Debug: 1")
    state.set_sandbox_field("payload", '{"order": 2}')

    done = toasts(await run(state.confirm_sandbox()))

    assert "Sandbox retry queued" in done and state.sandbox_id == 0
    assert (await DeadLetter.get(id=dead.id)).status == S.ACTIVE
    sent = await Delivery.filter(retry_of_id=dead.delivery_id).get()  # type: ignore[attr-defined]
    meta = sent.metadata["__retry_metadata"]
    assert meta["sandbox"] is True and meta["overrides"] == {
        "url": SANDBOX_URL, "headers": {"X-Debug": "1"}, "payload": {"order": 2}}
    [audit] = await AuditLog.filter(action="dlq.sandbox_retry")
    assert audit.actor == actor_of("operator") and audit.details["url"] == SANDBOX_URL


async def test_bad_sandbox_overrides_are_named_inline_and_nothing_is_sent(backend):
    dead = await entry(await make_endpoint(URL))
    state = await page_state("operator")
    state.ask_sandbox(dead.id)
    state.set_sandbox_field("payload", "{oops")
    assert toasts(await run(state.confirm_sandbox())) == ""
    assert state.sandbox_errors["url"].startswith("URL: required")
    assert state.sandbox_errors["payload"].startswith("Payload: not valid JSON")

    state.set_sandbox_field("url", SANDBOX_URL)
    state.set_sandbox_field("payload", "")
    state.set_sandbox_field("headers", "webhook-id: forged")  # refused by the operation
    assert toasts(await run(state.confirm_sandbox())) == ""
    assert "cannot be overridden" in state.sandbox_errors["headers"]
    assert state.sandbox_id == dead.id and state.busy == []
    assert await Delivery.all().count() == 1  # only the failed one
    assert not await AuditLog.exists(action="dlq.sandbox_retry")


async def test_viewer_cannot_send_a_sandbox_retry(backend):
    dead = await entry(await make_endpoint(URL))
    state = await page_state("viewer")
    state.ask_sandbox(dead.id)
    state.set_sandbox_field("url", SANDBOX_URL)
    assert "may not do this" in toasts(await run(state.confirm_sandbox()))
    assert await Delivery.all().count() == 1 and await AuditLog.all().count() == 0


def test_sandbox_dialog_renders_each_field_error():
    errors = {"url": "", "headers": 'Headers: line 1 must be "Name: value"', "payload": ""}
    rendered = str(sandbox_dialog(True, "#3", {"url": "", "headers": "x", "payload": ""}, errors))
    assert "dlq-sandbox-error-headers" in rendered and "dlq-sandbox-error-url" not in rendered
    assert "Sandbox retry of DLQ entry #3" in rendered


# -- Retry all matching and live pushes -------------------------------------------------------

async def test_retry_all_matching_counts_the_active_entries_of_the_filter(backend):
    shop, blog = await make_endpoint(URL), await make_endpoint("http://127.0.0.1:9/blog")
    for _ in range(3):
        await entry(shop)
    await entry(shop, S.ARCHIVED)
    await entry(blog)
    state = await page_state("operator")
    await apply(state, endpoint_id=str(shop.id), status="archived")

    bulk = await state.get_state(BulkRetryState)
    await run(bulk.ask_retry_all(state.scope))  # what the button sends

    assert bulk.confirm_open and bulk.confirm_total == 3  # active ones, status filter aside
    assert bulk.confirm_scope == {"endpoint_id": shop.id}


async def test_the_page_load_asks_for_live_pushes_on_its_route(backend):
    state = await page_state("viewer")
    scheduler = await state.get_state(SchedulerState)
    scheduler.rx_router_route_id = routes.DLQ  # type: ignore[attr-defined]
    assert scheduler._wants_push()
    scheduler.rx_router_route_id = routes.ENDPOINTS  # type: ignore[attr-defined]
    assert not scheduler._wants_push()


async def test_a_signed_out_session_loads_nothing(backend):
    await entry(await make_endpoint(URL))
    state = await rx.State().get_state(DlqPageState)
    await state.load()
    assert not state.loaded and state.rows == []
    assert not (await state.get_state(AuthState)).signed_in


# -- rendering --------------------------------------------------------------------------------

async def _item(backend_entry: DeadLetter) -> dict[str, Any]:
    row = await queries.get_dead_letter(backend_entry.id)
    assert row is not None
    return dict(dead_letter_item(row))


async def test_rows_offer_delete_to_admins_only_and_disable_what_the_status_rules_out(backend):
    item = await _item(await entry(await make_endpoint(URL), S.RETRYING))
    operator_row = str(entry_row(item, can_operate=True, is_admin=False))
    admin_row = str(entry_row(item, can_operate=True, is_admin=True))
    assert f"dlq-page-entry-{item['id']}" in operator_row
    assert f"Details DLQ entry {item['id']}" in operator_row
    assert "Delete DLQ entry" not in operator_row and "Delete DLQ entry" in admin_row
    assert "Queued" in operator_row  # the status badge of a retrying entry


def test_filter_bar_shows_each_error_under_its_field():
    errors = dict.fromkeys(DEFAULT_FORM, "") | {"until": "Until: must be on or after since"}
    rendered = str(filter_bar(DEFAULT_FORM, errors))
    assert "dlq-filter-error-until" in rendered and "must be on or after since" in rendered
    assert "dlq-filter-error-since" not in rendered
    for field in ("status", "event_type", "endpoint_id", "app_id", "since", "until", "q"):
        assert f"dlq-filter-{field}" in rendered


def test_stats_detail_and_confirmations_render_their_values():
    strip = str(stats_strip({"active": 7, "retrying": 2, "resolved": 0, "archived": 1}, 10))
    assert "dlq-stat-active" in strip and "Failed" in strip and "Archived" in strip
    detail = str(detail_dialog(True, {"id": "12", "status": "active"}, '{\n  "order": 42\n}',
                               [{"name": "webhook-id", "value": "msg_7"}], [], []))
    assert "DLQ entry #12" in detail and "msg_7" in detail and "order" in detail
    assert "No attempt was recorded." in detail and "dlq-detail-sandbox" in detail
    delete = str(confirm_action_dialog("Delete", True, "#12 (order.created → x)", "", ""))
    assert "Delete DLQ entry #12" in delete and "cannot be undone" in delete


def test_page_and_navigation_render_with_retry_all_and_progress_cards():
    page = str(dlq_page())
    for needle in ("dlq-retry-all-matching", "bulk-operations", "retry-all-confirm",
                   "dlq-page-next", "dlq-page-previous", "dlq-detail", "dlq-archive-dialog",
                   "dlq-delete-dialog", "dlq-filters"):
        assert needle in page, needle
    assert "Dead letters" in str(header(routes.DLQ))


# -- export -----------------------------------------------------------------------------------

def _flat_events(items: list[Any]) -> list[Any]:
    return [event for item in items if item is not None
            for event in (item if isinstance(item, list) else [item])]


def downloaded(items: list[Any]) -> tuple[str, str] | None:
    """(filename, file text) of the rx.download the export handed to the browser, if any."""
    for event in _flat_events(items):
        if getattr(event.handler.fn, "__qualname__", "") == "_download":
            args = {str(name): value._var_value for name, value in event.args}
            header, _, data = args["url"].partition(",")
            assert header.endswith(";base64")
            return args["filename"], base64.b64decode(data).decode("utf-8")
    return None


async def test_export_holds_exactly_the_filtered_entries_as_csv_and_jsonl(backend):
    shop, blog = await make_endpoint(URL), await make_endpoint("http://127.0.0.1:9/blog")
    first = await make_dead_letter(shop, payload={"order": 1, "note": "café, \"quoted\""})
    await entry(shop, S.ARCHIVED)  # not open
    await entry(shop, event_type="order.paid")  # another event type
    await entry(blog)  # another endpoint
    second = await entry(shop, S.RETRYING)
    state = await page_state("viewer")  # an export is a read
    await apply(state, endpoint_id=str(shop.id), event_type="order.created")
    state.set_filter("endpoint_id", "")  # typed, not applied: the export follows the page

    handler = state.export("csv")
    await anext(handler)  # first yield: the button is busy before the work
    assert state.exporting == "csv"
    items = await run(handler)

    assert state.exporting == ""
    filename, text = downloaded(items) or ("", "")
    assert re.fullmatch(r"dlq-export-\d{8}T\d{6}Z\.csv", filename)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["id"]) for r in rows] == [first.id, second.id]  # oldest first, like REST
    assert [r["status"] for r in rows] == ["active", "retrying"]
    assert json.loads(rows[0]["payload"]) == {"order": 1, "note": 'café, "quoted"'}
    assert rows[0]["endpoint_id"] == str(shop.id) and rows[0]["resolved_at"] == ""
    assert "Export ready" in toasts(items) and "2 entries exported as CSV" in toasts(items)

    items = await run(state.export("jsonl"))
    filename, text = downloaded(items) or ("", "")
    assert filename.endswith(".jsonl")
    lines = [json.loads(line) for line in text.splitlines()]
    assert [(r["id"], r["event_type"], r["endpoint_id"]) for r in lines] == [
        (first.id, "order.created", shop.id), (second.id, "order.created", shop.id)]
    assert lines[0]["payload"] == {"order": 1, "note": 'café, "quoted"'}
    assert "2 entries exported as JSON Lines" in toasts(items)
    assert await AuditLog.all().count() == 0  # a read, not audited (as REST)


async def test_export_of_a_status_filter_and_of_nothing(backend):
    shop = await make_endpoint(URL)
    await entry(shop)
    archived = await entry(shop, S.ARCHIVED)
    state = await page_state("operator")
    await apply(state, status="archived")
    _, text = downloaded(await run(state.export("jsonl"))) or ("", "")
    assert [json.loads(line)["id"] for line in text.splitlines()] == [archived.id]

    await apply(state, status="resolved")
    items = await run(state.export("csv"))
    assert downloaded(items) is None and "Nothing to export" in toasts(items)
    assert await run(state.export("xlsx")) == [] and state.exporting == ""


async def test_export_of_a_signed_out_session_is_refused(backend):
    await entry(await make_endpoint(URL))
    state = await page_state("viewer")
    auth = await state.get_state(AuthState)
    await revoke_token(auth.session_token)  # signed out in another tab

    items = await run(state.export("csv"))

    assert downloaded(items) is None
    assert "Export failed" in toasts(items) and "session has ended" in toasts(items)
    assert state.exporting == "" and not auth.signed_in
    never = await rx.State().get_state(DlqPageState)  # never signed in
    items = await run(never.export("jsonl"))
    assert downloaded(items) is None and "session has ended" in toasts(items)


async def test_export_stops_at_the_dashboard_limit_and_says_where_to_get_the_rest(
        backend, monkeypatch):
    shop = await make_endpoint(URL)
    made = [(await entry(shop)).id for _ in range(5)]
    monkeypatch.setattr(dlq_export, "MAX_ROWS", 3)
    state = await page_state("viewer")

    items = await run(state.export("csv"))

    _, text = downloaded(items) or ("", "")
    assert [int(r["id"]) for r in csv.DictReader(io.StringIO(text))] == made[:3]
    said = toasts(items)
    assert "Export cut short" in said and "oldest 3 matching entries" in said
    assert "at most 3 entries" in said and "observatory dlq export" in said
    assert "GET /v1/dlq/export" in said

    monkeypatch.setattr(dlq_export, "MAX_ROWS", 5)  # exactly the limit: nothing was left out
    items = await run(state.export("csv"))
    assert "Export ready" in toasts(items) and "cut short" not in toasts(items)

    monkeypatch.setattr(dlq_export, "MAX_BYTES", 1)  # the size limit too, a row past it
    items = await run(state.export("jsonl"))
    _, text = downloaded(items) or ("", "")
    assert [json.loads(line)["id"] for line in text.splitlines()] == made[:1]
    assert "Export cut short" in toasts(items)


def test_export_menu_offers_both_formats_and_spins_while_busy():
    rendered = str(export_menu(True, "At most 3 entries here", on_export=None))
    assert "dlq-export-csv" in rendered and "dlq-export-jsonl" in rendered
    assert "JSON Lines" in rendered and "At most 3 entries here" in rendered
    assert "loading:true" in rendered.replace(" ", "")
    assert "dlq-export" in str(dlq_page())
