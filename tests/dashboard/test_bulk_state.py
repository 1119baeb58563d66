"""Retry All from the dashboard: the frozen count, starting, live cards, Pause/Resume/Cancel,
and roles checked inside every handler."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio

from dashboard import runtime
from dashboard.state.bulk import BulkRetryState, load_operations
from dashboard.state.panels import Panel, fetch_panels, panels_for_events
from dashboard.state.scheduler import SchedulerState, apply_panels
from models.audit import AuditLog
from models.bulk import BulkOperation
from models.enums import BulkState
from tests.dashboard.sessions import actor_of, signed_in
from tests.dashboard.test_scheduler_state import make_dead_letter


@pytest_asyncio.fixture
async def backend(db: str, redis: Any) -> AsyncIterator[Any]:
    yield redis
    await runtime.close()


async def drive(handler: Any) -> list[Any]:
    return [item async for item in handler]


async def bulk_state(role: str = "operator") -> BulkRetryState:
    root = await signed_in(role)
    await (await root.get_state(SchedulerState)).load()
    return await root.get_state(BulkRetryState)


async def test_confirm_counts_the_frozen_selection_and_later_failures_are_left_out(backend):
    first = [await make_dead_letter() for _ in range(3)]
    state = await bulk_state()

    await drive(state.ask_retry_all())
    assert state.confirm_open and state.confirm_total == 3
    assert state.confirm_snapshot == max(e.id for e in first)

    late = await make_dead_letter()  # fails while the dialog is open
    await state.note_entries()
    assert state.new_since_confirm == 1

    state.set_reason("receiver fixed")
    items = await drive(state.confirm_retry_all())

    assert any("Retry all started" in str(i) for i in items if i is not None)
    assert not state.confirm_open
    op = await BulkOperation.get()
    assert (op.total, op.actor, op.reason) == (3, actor_of("operator"), "receiver fixed")
    assert op.scope["max_id"] < late.id
    [audit] = await AuditLog.filter(action="dlq.retry_all")
    assert audit.actor == actor_of("operator") and audit.details["total"] == 3
    [card] = state.operations
    assert (card["id"], card["total"], card["live"]) == (op.id, 3, True)
    assert card["new_failures"] == 1  # the late one, shown on the card, not swept in


async def test_nothing_to_retry_says_so_and_opens_no_dialog(backend):
    state = await bulk_state()
    items = await drive(state.ask_retry_all())
    assert not state.confirm_open
    assert any("Nothing to retry" in str(i) for i in items if i is not None)


async def test_viewer_cannot_start_or_control_and_nothing_changes(backend):
    await make_dead_letter()
    operator = await bulk_state("operator")
    await drive(operator.ask_retry_all())
    await drive(operator.confirm_retry_all())
    op = await BulkOperation.get()

    viewer = await bulk_state("viewer")
    refused = await drive(viewer.ask_retry_all())
    assert not viewer.confirm_open
    assert any("needs 'operator'" in str(i) for i in refused if i is not None)
    refused = await drive(viewer.cancel(op.id))
    assert any("needs 'operator'" in str(i) for i in refused if i is not None)
    assert (await BulkOperation.get(id=op.id)).state == BulkState.RUNNING
    assert await AuditLog.filter(actor=actor_of("viewer")).count() == 0


async def test_pause_resume_cancel_from_the_card(backend):
    await make_dead_letter()
    state = await bulk_state()
    await drive(state.ask_retry_all())
    await drive(state.confirm_retry_all())
    op = await BulkOperation.get()

    await drive(state.pause(op.id))
    assert (await BulkOperation.get(id=op.id)).state == BulkState.PAUSED
    assert state.operations[0]["state"] == "paused" and state.busy == []
    await drive(state.resume(op.id))
    assert (await BulkOperation.get(id=op.id)).state == BulkState.RUNNING
    await drive(state.cancel(op.id))
    assert (await BulkOperation.get(id=op.id)).state in (BulkState.CANCELLING,
                                                          BulkState.CANCELLED)
    actions = await AuditLog.filter(target_type="bulk_operation").values_list("action", flat=True)
    assert sorted(actions) == sorted(["dlq.retry_all", "bulk.pause", "bulk.resume",
                                      "bulk.cancel"])

    refused = await drive(state.resume(op.id))  # not paused any more
    assert any("not resumed" in str(i) for i in refused if i is not None)


async def test_progress_events_refresh_the_operations_panel_only(backend):
    assert panels_for_events(["bulk.progress"]) == frozenset({Panel.OPERATIONS})
    await make_dead_letter()
    state = await bulk_state()
    await drive(state.ask_retry_all())
    await drive(state.confirm_retry_all())

    data = await fetch_panels({Panel.OPERATIONS})
    assert [o["total"] for o in data["operations"]] == [1]
    other = await signed_in("viewer")  # another tab sees the same operation pushed
    await apply_panels(await other.get_state(SchedulerState), data)
    assert (await other.get_state(BulkRetryState)).operations == data["operations"]
    assert await load_operations() == data["operations"]


async def test_an_operation_finishing_on_screen_is_announced_once(backend):
    state = await bulk_state()
    card = {"id": 7, "state": "running", "live": True, "total": 23, "done": 15, "succeeded": 13,
            "failed": 2, "cancelled": 0, "percent": 65, "figures_label": "", "eta_label": "",
            "scope_label": "", "actor": "a", "reason": "", "halted_reason": "",
            "new_failures": 0}
    state._apply([card])
    assert state.finished_summary == ""
    state._apply([{**card, "state": "completed", "live": False, "done": 23, "succeeded": 20,
                   "failed": 3}])

    assert state.finished_summary == "Bulk retry #7 complete: 20 succeeded, 3 failed"
    assert "Bulk retry #7 complete: 20 succeeded, 3 failed" in str(state.announce())
    assert state.finished_summary == "" and state.announce() is None
