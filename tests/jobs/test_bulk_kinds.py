"""Re-sync of an endpoint and archive/delete by filter: bulk operations on the real Redis,
database, bulk-lane worker and a scripted receiver."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from jobs.errors import ConflictError, NotFoundError, ValidationError
from jobs.operations import bulk
from jobs.operations.bulk import NothingToArchiveError, NothingToDeleteError
from jobs.operations.resync import (EndpointDisabledError, NothingToResyncError, preview_resync,
                                    start_resync)
from models.audit import AuditLog
from models.bulk import BulkOperation
from models.dead_letters import DeadLetter
from models.deliveries import Delivery, Message
from models.dlq_filter import DlqFilter
from models.endpoints import Endpoint
from models.enums import BulkKind, BulkState, DeadLetterStatus, DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint
from tests.jobs.test_bulk import _adds_up, wait_for
from tests.receiver import Reply

A = DeadLetterStatus


pytestmark = pytest.mark.usefixtures("unpaced")  # see tests/conftest.py


async def _message(endpoint: Endpoint, *, deliveries: int = 1, age_days: float = 0,
                   status: DeliveryStatus = DeliveryStatus.SUCCEEDED) -> Message:
    """A message the endpoint received `deliveries` times (created `age_days` ago)."""
    message = await Message.create(app_id=endpoint.app_id, event_type="order.paid",  # type: ignore[attr-defined]
                                   payload={"n": 1})
    if age_days:
        await Message.filter(id=message.id).update(
            created_at=datetime.now(UTC) - timedelta(days=age_days))
    for _ in range(deliveries):
        await Delivery.create(message=message, endpoint=endpoint, status=status, attempts=1)
    return message


def _webhook_ids(receiver, path: str) -> list[str]:
    return sorted(r.headers["webhook-id"] for r in receiver.hits(path))


# --- re-sync ----------------------------------------------------------------------------------

async def test_resync_redelivers_each_message_once_as_new_deliveries(db, redis, receiver,
                                                                    run_bulk):
    endpoint = await make_endpoint(receiver.url("/ok"))
    other = await make_endpoint(receiver.url("/other"))
    twice = await _message(endpoint, deliveries=2)  # delivered twice: re-sent once
    once = await _message(endpoint, status=DeliveryStatus.FAILED)
    await _message(other)  # never sent to this endpoint
    before = await Delivery.all().count()

    started = await start_resync(endpoint.id, "root", reason="receiver lost its data",
                                 redis=redis)
    await run_bulk()

    assert started["total"] == 2 and started["snapshot"] == once.id
    assert _webhook_ids(receiver, "/ok") == sorted([f"msg_{twice.id}", f"msg_{once.id}"])
    assert receiver.hits("/other") == []
    op = await BulkOperation.get(id=started["operation_id"])
    assert op.kind == BulkKind.RESYNC and op.state == BulkState.COMPLETED
    assert (op.total, op.completed, op.succeeded, op.failed, op.skipped) == (2, 2, 2, 0, 0)
    _adds_up(op)
    new = await Delivery.filter(bulk_operation_id=op.id).order_by("message_id")
    assert await Delivery.all().count() == before + 2
    assert [d.message_id for d in new] == [twice.id, once.id]  # type: ignore[attr-defined]
    latest = await Delivery.filter(message_id=twice.id,  # the second original
                                   bulk_operation_id=None).order_by("-id").first()
    assert new[0].retry_of_id == latest.id  # type: ignore[attr-defined, union-attr]
    assert all(d.status == DeliveryStatus.SUCCEEDED and d.attempts == 1 for d in new)
    assert new[0].metadata["__resync"] == {"bulk_operation_id": op.id,
                                           "original_delivery_id": latest.id}  # type: ignore[union-attr]
    [audit] = await AuditLog.all()
    assert (audit.action, audit.actor, audit.target_id) == ("endpoint.resync", "root", str(op.id))
    assert audit.details["total"] == 2 and audit.details["reason"] == "receiver lost its data"
    assert audit.details["scope"] == {"endpoint_id": endpoint.id, "max_id": once.id}
    assert not await DeadLetter.exists()


async def test_resync_since_a_date_sends_only_newer_messages(db, redis, receiver, run_bulk):
    endpoint = await make_endpoint(receiver.url("/ok"))
    await _message(endpoint, age_days=10)
    recent = [await _message(endpoint, age_days=1) for _ in range(2)]
    since = datetime.now(UTC) - timedelta(days=3)

    assert (await preview_resync(endpoint.id))["total"] == 3
    dry = await preview_resync(endpoint.id, since=since)
    started = await start_resync(endpoint.id, "root", since=since, redis=redis)
    await run_bulk()

    assert dry == {"total": 2, "snapshot": recent[-1].id} and started["total"] == 2
    assert _webhook_ids(receiver, "/ok") == sorted(f"msg_{m.id}" for m in recent)
    op = await BulkOperation.get(id=started["operation_id"])
    assert op.scope["since"] == since.isoformat() and op.succeeded == 2


async def test_messages_published_after_the_start_are_not_resent(db, redis, receiver, run_bulk):
    endpoint = await make_endpoint(receiver.url("/ok"))
    first = [await _message(endpoint) for _ in range(3)]
    dry = await preview_resync(endpoint.id)
    await _message(endpoint)  # after the confirmation: not included

    started = await start_resync(endpoint.id, "root", snapshot=dry["snapshot"], redis=redis)
    await _message(endpoint)  # after the start: not included either
    await run_bulk()

    assert started["total"] == 3
    assert _webhook_ids(receiver, "/ok") == sorted(f"msg_{m.id}" for m in first)
    assert (await BulkOperation.get(id=started["operation_id"])).succeeded == 3


async def test_cancel_mid_way_stops_the_resync_and_leaves_nothing_queued(
        db, redis, receiver, run_bulk, monkeypatch):
    monkeypatch.setenv("OBSERVATORY_BULK_RATE_PER_ENDPOINT", "20")  # ~2 s for 40 messages
    receiver.script("/ok", Reply(delay_s=0.1))
    endpoint = await make_endpoint(receiver.url("/ok"))
    for _ in range(40):
        await _message(endpoint)
    started = await start_resync(endpoint.id, "root", redis=redis)
    op_id = started["operation_id"]
    worker = asyncio.create_task(run_bulk())

    await wait_for(lambda: _true(len(receiver.hits("/ok")) >= 4))
    await bulk.cancel_operation(op_id, "bob", redis=redis)
    at_cancel = len(receiver.hits("/ok"))
    await asyncio.wait_for(worker, 30)

    op = await BulkOperation.get(id=op_id)
    assert op.state == BulkState.CANCELLED and op.cancelled_count > 0
    _adds_up(op)
    hits = receiver.hits("/ok")
    assert op.succeeded == len(hits) <= at_cancel + 4  # only those in flight finished
    assert len({h.headers["webhook-id"] for h in hits}) == len(hits)  # none twice
    assert await Delivery.filter(bulk_operation_id=op_id, status__in=[
        DeliveryStatus.QUEUED, DeliveryStatus.RUNNING]).count() == 0
    cancelled = await Delivery.filter(bulk_operation_id=op_id,
                                      status=DeliveryStatus.CANCELLED).count()
    assert cancelled + (40 - op.handed) == op.cancelled_count
    assert not await DeadLetter.exists()


async def _true(value: bool) -> bool:
    return value


async def test_a_failed_resync_delivery_is_dead_lettered_once_per_message(db, redis, receiver,
                                                                         run_bulk):
    receiver.script("/down", Reply(status=500))
    endpoint = await make_endpoint(receiver.url("/down"))
    entry = await make_dead_letter(endpoint)  # its message already failed: an active entry
    plain = await _message(endpoint)  # succeeded back then, fails now

    started = await start_resync(endpoint.id, "root", redis=redis)
    await run_bulk()

    op = await BulkOperation.get(id=started["operation_id"])
    assert (op.total, op.completed, op.failed) == (2, 2, 2)
    assert len(receiver.hits("/down")) == 2  # one attempt each
    entries = await DeadLetter.all().order_by("id")
    assert len(entries) == 2
    old, new = entries
    assert old.id == entry.id and old.status == A.ACTIVE and old.retry_count == 1
    assert len(old.error_history) == 4 and old.error_history[-1]["status_code"] == 500
    assert old.last_retry_delivery_id in {d.id for d in await Delivery.filter(  # type: ignore[attr-defined]
        bulk_operation_id=op.id)}
    assert new.message_id == plain.id and new.status == A.ACTIVE  # type: ignore[attr-defined]
    resync_delivery = await Delivery.get(id=new.delivery_id)  # type: ignore[attr-defined]
    assert resync_delivery.bulk_operation_id == op.id  # type: ignore[attr-defined]


async def test_a_successful_resync_resolves_the_messages_active_entry(db, redis, receiver,
                                                                     run_bulk):
    endpoint = await make_endpoint(receiver.url("/ok"))
    entry = await make_dead_letter(endpoint)

    await start_resync(endpoint.id, "root", redis=redis)
    await run_bulk()

    stored = await DeadLetter.get(id=entry.id)
    assert stored.status == A.RESOLVED and stored.resolved_at is not None
    assert len(receiver.hits("/ok")) == 1


async def test_resync_refuses_a_disabled_unknown_or_silent_endpoint(db, redis, receiver,
                                                                    monkeypatch):
    off = await make_endpoint(receiver.url("/off"), enabled=False, disabled_reason="gone")
    await _message(off)
    silent = await make_endpoint(receiver.url("/silent"))

    with pytest.raises(EndpointDisabledError, match=f"endpoint {off.id} is disabled"):
        await start_resync(off.id, "root", redis=redis)
    with pytest.raises(EndpointDisabledError):
        await preview_resync(off.id)
    with pytest.raises(NotFoundError):
        await start_resync(off.id + 100, "root", redis=redis)
    with pytest.raises(NothingToResyncError, match="received no message"):
        await start_resync(silent.id, "root", redis=redis)
    assert await preview_resync(silent.id) == {"total": 0, "snapshot": None}
    monkeypatch.setenv("OBSERVATORY_REQUIRE_REASON", "1")
    await _message(silent)
    with pytest.raises(ValidationError, match="reason"):
        await start_resync(silent.id, "root", redis=redis)
    assert not await BulkOperation.exists() and not await AuditLog.exists()


async def test_a_resync_batch_of_an_endpoint_disabled_meanwhile_is_skipped(db, redis, receiver,
                                                                          run_bulk):
    endpoint = await make_endpoint(receiver.url("/ok"))
    for _ in range(3):
        await _message(endpoint)
    started = await start_resync(endpoint.id, "root", redis=redis)
    await Endpoint.filter(id=endpoint.id).update(enabled=False)

    await run_bulk()

    op = await BulkOperation.get(id=started["operation_id"])
    assert op.state == BulkState.COMPLETED and (op.skipped, op.handed) == (3, 0)
    _adds_up(op)
    assert receiver.hits("/ok") == [] and not await Delivery.filter(bulk_operation_id=op.id)


# --- archive and delete by filter -------------------------------------------------------------

async def _mixed(endpoint: Endpoint) -> dict[DeadLetterStatus, list[DeadLetter]]:
    """Two entries of each status."""
    return {s: [await make_dead_letter(endpoint, status=s) for _ in range(2)] for s in A}


async def _statuses() -> dict[int, DeadLetterStatus]:
    return dict(await DeadLetter.all().values_list("id", "status"))


async def test_archive_all_archives_active_and_resolved_entries_only(db, redis, receiver,
                                                                    run_bulk):
    endpoint = await make_endpoint(receiver.url("/ok"))
    entries = await _mixed(endpoint)
    dry = await bulk.preview(DlqFilter(), kind=BulkKind.ARCHIVE)

    started = await bulk.start_archive_all(DlqFilter(), "olga", reason="tidy up", redis=redis)
    await run_bulk()

    assert dry["total"] == started["total"] == 4
    op = await BulkOperation.get(id=started["operation_id"])
    assert op.kind == BulkKind.ARCHIVE and op.state == BulkState.COMPLETED
    assert (op.total, op.completed, op.succeeded, op.failed, op.skipped) == (4, 4, 4, 0, 0)
    _adds_up(op)
    statuses = await _statuses()
    for s in (A.ACTIVE, A.RESOLVED, A.ARCHIVED):
        assert all(statuses[e.id] == A.ARCHIVED for e in entries[s])
    assert all(statuses[e.id] == A.RETRYING for e in entries[A.RETRYING])  # untouched
    [audit] = await AuditLog.all()
    assert (audit.action, audit.actor, audit.target_id) == ("dlq.archive_all", "olga", str(op.id))
    assert audit.details["total"] == 4 and audit.details["reason"] == "tidy up"
    assert audit.details["scope"]["status"] == ["active", "resolved"]
    live = await bulk.get_operation(op.id, redis=redis)
    assert (live["kind"], live["completed"], live["succeeded"]) == ("archive", 4, 4)


async def test_delete_all_by_filter_deletes_that_scope_only(db, redis, receiver, run_bulk):
    mine = await make_endpoint(receiver.url("/a"))
    other = await make_endpoint(receiver.url("/b"))
    entries = await _mixed(mine)
    kept = [await make_dead_letter(other) for _ in range(3)]

    started = await bulk.start_delete_all(DlqFilter(endpoint_id=mine.id), "root", redis=redis)
    await run_bulk()

    assert started["total"] == 6  # every status but retrying
    op = await BulkOperation.get(id=started["operation_id"])
    assert op.state == BulkState.COMPLETED and (op.completed, op.succeeded) == (6, 6)
    _adds_up(op)
    left = await _statuses()
    assert sorted(left) == sorted([e.id for e in entries[A.RETRYING]] + [e.id for e in kept])
    # the delivery log stays: every failed delivery and message is still there
    assert await Delivery.all().count() == 8 + 3 and await Message.all().count() == 11
    assert [a.action for a in await AuditLog.all()] == ["dlq.delete_all"]


async def test_the_snapshot_and_start_time_bound_archive_and_delete(db, redis, receiver,
                                                                    run_bulk):
    endpoint = await make_endpoint(receiver.url("/ok"))
    first = [await make_dead_letter(endpoint) for _ in range(4)]
    dry = await bulk.preview(DlqFilter(), kind=BulkKind.DELETE)
    later = await make_dead_letter(endpoint)  # failed after the confirmation

    started = await bulk.start_delete_all(DlqFilter(), "root", snapshot=dry["snapshot"],
                                          redis=redis)
    await asyncio.sleep(0.01)
    # retried after the start: left alone (counted skipped), whatever its status now
    await DeadLetter.filter(id=first[0].id).update(status=A.ACTIVE,
                                                   updated_at=datetime.now(UTC))
    await run_bulk()

    assert started["total"] == 4
    op = await BulkOperation.get(id=started["operation_id"])
    assert (op.succeeded, op.skipped, op.state) == (3, 1, BulkState.COMPLETED)
    _adds_up(op)
    assert sorted(await _statuses()) == sorted([first[0].id, later.id])


async def test_cancel_before_the_walk_leaves_every_entry_alone(db, redis, receiver, run_bulk):
    endpoint = await make_endpoint(receiver.url("/ok"))
    for _ in range(5):
        await make_dead_letter(endpoint)
    started = await bulk.start_archive_all(DlqFilter(), "olga", redis=redis)

    view = await bulk.cancel_operation(started["operation_id"], "olga", redis=redis)
    await run_bulk()

    assert view["state"] == "cancelled" and view["cancelled"] == 5
    op = await BulkOperation.get(id=started["operation_id"])
    assert op.state == BulkState.CANCELLED and op.cancelled_count == 5
    _adds_up(op)
    assert set((await _statuses()).values()) == {A.ACTIVE}


async def test_a_walk_over_several_batches_pauses_and_resumes(db, redis, receiver, monkeypatch):
    from jobs.operations import bulk_walk

    monkeypatch.setattr(bulk_walk, "DB_BATCH", 2)
    endpoint = await make_endpoint(receiver.url("/ok"))
    for _ in range(5):
        await make_dead_letter(endpoint)
    started = await bulk.start_archive_all(DlqFilter(), "olga", redis=redis)
    op_id = started["operation_id"]
    await bulk.pause_operation(op_id, "olga", redis=redis)
    walker = asyncio.create_task(bulk_walk.walk_bulk_operation({"redis": redis}, op_id))
    await asyncio.sleep(0.3)
    assert await DeadLetter.filter(status=A.ARCHIVED).count() == 0  # paused: nothing done

    await bulk.resume_operation(op_id, "olga", redis=redis)
    assert await asyncio.wait_for(walker, 10) == "walked"

    op = await BulkOperation.get(id=op_id)
    assert op.state == BulkState.COMPLETED and op.succeeded == 5 and op.cursor > 0
    assert await DeadLetter.filter(status=A.ARCHIVED).count() == 5


async def test_bad_scopes_and_empty_scopes_are_refused(db, redis, receiver, monkeypatch):
    endpoint = await make_endpoint(receiver.url("/ok"))
    await make_dead_letter(endpoint, status=A.ARCHIVED)
    await make_dead_letter(endpoint, status=A.RETRYING)

    with pytest.raises(ValidationError, match="scope.status"):
        await bulk.start_archive_all(DlqFilter(status=[A.ARCHIVED]), "olga", redis=redis)
    with pytest.raises(ValidationError, match="scope.status"):
        await bulk.start_delete_all(DlqFilter(status=[A.RETRYING]), "root", redis=redis)
    with pytest.raises(NothingToArchiveError, match="nothing to archive"):
        await bulk.start_archive_all(DlqFilter(), "olga", redis=redis)
    with pytest.raises(NothingToDeleteError):
        await bulk.start_delete_all(DlqFilter(status=[A.ACTIVE]), "root", redis=redis)
    monkeypatch.setenv("OBSERVATORY_REQUIRE_REASON", "yes")
    with pytest.raises(ValidationError, match="reason"):
        await bulk.start_delete_all(DlqFilter(), "root", redis=redis)
    assert not await BulkOperation.exists() and not await AuditLog.exists()
    assert await DeadLetter.all().count() == 2
    assert issubclass(NothingToArchiveError, ConflictError)

