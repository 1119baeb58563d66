"""The Retry All walker's large set-based steps (jobs.operations.bulk_walk, bulk_claim) against
the real database and Redis: what one step writes, cancels landing mid-step, overlapping
operations, and the Redis side of a step (jobs, figures, one progress event)."""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest

from jobs.operations import bulk, bulk_walk
from jobs.queue import BATCH_SIZE, bulk_queue_name
from models.bulk import BulkOperation
from models.config import get_settings
from models.dead_letters import DeadLetter
from models.deliveries import Delivery, Message
from models.dlq_filter import DlqFilter
from models.endpoints import Endpoint
from models.enums import BulkState, DeadLetterStatus, DeliveryStatus
from tests.factories import make_endpoint


pytestmark = pytest.mark.usefixtures("unpaced")  # see tests/conftest.py


async def _many(endpoint: Endpoint, n: int) -> list[int]:
    """`n` active entries of `endpoint` (failed deliveries of fresh messages), written in
    bulk; their ids in order."""
    app_id = endpoint.app_id  # type: ignore[attr-defined]
    top = await Message.all().order_by("-id").first()
    after = top.id if top else 0
    await Message.bulk_create([Message(app_id=app_id, event_type="order.created",
                                       payload={"order": i}) for i in range(n)])
    messages = await Message.filter(id__gt=after).order_by("id").values_list("id", flat=True)
    top = await Delivery.all().order_by("-id").first()
    after = top.id if top else 0
    await Delivery.bulk_create([Delivery(message_id=m, endpoint_id=endpoint.id, attempts=3,
                                         status=DeliveryStatus.FAILED) for m in messages])
    deliveries = await Delivery.filter(id__gt=after).order_by("id").values_list(
        "id", "message_id")
    await DeadLetter.bulk_create([DeadLetter(
        delivery_id=d, message_id=m, endpoint_id=endpoint.id, endpoint_url=endpoint.url,
        status=DeadLetterStatus.ACTIVE, failure_reason="max_attempts_exceeded", attempts=3,
        error_history=[{"attempt": 3, "status_code": 500}]) for d, m in deliveries])
    return list(await DeadLetter.filter(endpoint_id=endpoint.id).order_by("id").values_list(
        "id", flat=True))


async def _queued(redis) -> list[tuple[list[int], int]]:
    """The (delivery ids, operation id) of every job waiting on the bulk lane but walkers."""
    jobs = await redis.queued_jobs(queue_name=bulk_queue_name())
    return [(j.args[0], j.args[1]) for j in jobs if j.function == "deliver_batch"]


def _adds_up(op: BulkOperation) -> None:
    assert op.completed == op.succeeded + op.failed
    assert op.completed + op.cancelled_count + op.skipped == op.total


async def test_one_step_claims_creates_and_links_its_entries(db, redis, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    ids = await _many(endpoint, bulk_walk.WALK_BATCH + 30)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op = await BulkOperation.get(id=started["operation_id"])
    walk = bulk_walk._Walk(op, bulk_walk._Pacer(0), time.monotonic() + 60)

    assert await bulk_walk._retry_batch(redis, walk, {}, bulk_walk.WALK_BATCH)

    row = await BulkOperation.get(id=op.id)
    assert (row.cursor, row.handed, row.skipped) == (ids[bulk_walk.WALK_BATCH - 1],
                                                     bulk_walk.WALK_BATCH, 0)
    entries = {e.id: e for e in await DeadLetter.filter(id__in=ids)}
    created = {d.id: d for d in await Delivery.filter(bulk_operation_id=op.id)}
    assert len(created) == bulk_walk.WALK_BATCH
    for entry_id in ids[:bulk_walk.WALK_BATCH]:
        entry = entries[entry_id]
        assert (entry.status, entry.retry_count) == (DeadLetterStatus.RETRYING, 1)
        new = created[entry.last_retry_delivery_id]  # type: ignore[attr-defined]
        assert (new.status, new.retry_of_id, new.message_id, new.endpoint_id) == (  # type: ignore[attr-defined]
            DeliveryStatus.QUEUED, entry.delivery_id, entry.message_id, endpoint.id)  # type: ignore[attr-defined]
        assert new.metadata["__retry_metadata"] == {
            "original_delivery_id": entry.delivery_id, "dead_letter_id": entry.id,  # type: ignore[attr-defined]
            "retry_count": 1, "sandbox": False, "bulk_operation_id": op.id}
    assert all(entries[i].status == DeadLetterStatus.ACTIVE
               for i in ids[bulk_walk.WALK_BATCH:])
    # the bulk lane got every delivery once, in jobs of BATCH_SIZE, and the hash the figures
    queued = await _queued(redis)
    assert sorted(d for batch, _ in queued for d in batch) == sorted(created)
    assert len(queued) == math.ceil(bulk_walk.WALK_BATCH / BATCH_SIZE)
    assert {op_id for _, op_id in queued} == {op.id}
    live = await redis.hgetall(bulk.progress_key(op.id))
    assert (int(live[b"handed"]), int(live[b"skipped"])) == (bulk_walk.WALK_BATCH, 0)


async def test_a_step_publishes_one_progress_event(db, redis, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    await _many(endpoint, 120)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    channel = redis.pubsub()
    await channel.subscribe(get_settings().events_channel)
    await channel.get_message(timeout=1)  # the subscription's confirmation

    await bulk.walk_bulk_operation({"redis": redis}, started["operation_id"])

    events = []
    while (message := await channel.get_message(timeout=0.5)) is not None:
        events.append(json.loads(message["data"]))
    await channel.aclose()
    running = [e for e in events if e["type"] == "bulk.progress" and e.get("handed")]
    assert [e["handed"] for e in running] == [120]  # one step: one event, not one per job


async def test_cancel_during_a_large_step_stops_the_walker_within_that_step(
        db, redis, receiver, run_bulk, monkeypatch):
    endpoint = await make_endpoint(receiver.url("/ok"))
    ids = await _many(endpoint, 3 * bulk_walk.WALK_BATCH)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    step_begun = asyncio.Event()
    original = bulk_walk.retry_step

    async def observed_step(op, scope):
        step_begun.set()
        return await original(op, scope)

    monkeypatch.setattr(bulk_walk, "retry_step", observed_step)
    walker = asyncio.create_task(bulk.walk_bulk_operation({"redis": redis}, op_id))
    await asyncio.wait_for(step_begun.wait(), 10)

    await bulk.cancel_operation(op_id, "bob", redis=redis)  # while the first step runs
    cancelled_at = time.monotonic()
    result = await asyncio.wait_for(walker, 10)
    stopped_after = time.monotonic() - cancelled_at

    assert result in ("cancelled", "superseded")
    assert stopped_after < 1.0
    op = await BulkOperation.get(id=op_id)
    assert op.handed in (0, bulk_walk.WALK_BATCH)  # the step in flight, nothing after it
    await run_bulk()

    op = await BulkOperation.get(id=op_id)
    assert op.state == BulkState.CANCELLED
    assert (op.completed, op.cancelled_count, op.skipped) == (0, len(ids), 0)
    _adds_up(op)
    assert receiver.hits("/ok") == []
    entries = await DeadLetter.filter(id__in=ids).values_list("status", "retry_count")
    assert set(entries) == {(DeadLetterStatus.ACTIVE, 0)}
    assert await Delivery.filter(bulk_operation_id=op_id).exclude(
        status=DeliveryStatus.CANCELLED).count() == 0


async def test_overlapping_retry_alls_claim_and_enqueue_each_entry_once(db, redis, receiver,
                                                                        run_bulk):
    endpoint = await make_endpoint(receiver.url("/ok"))
    ids = await _many(endpoint, bulk_walk.WALK_BATCH + 500)
    a = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    b = await bulk.start_retry_all(DlqFilter(), "bob", redis=redis)  # both confirmed all
    ctx = {"redis": redis}

    results = await asyncio.gather(*(bulk.walk_bulk_operation(ctx, x["operation_id"])
                                     for x in (a, b, a, b)))  # a second walker of each too

    assert "walked" in results and set(results) <= {"walked", "completed", "superseded"}
    deliveries = await Delivery.filter(bulk_operation_id__not_isnull=True).values_list(
        "id", "retry_of_id")
    assert len(deliveries) == len(ids)
    entries = await DeadLetter.filter(id__in=ids).values_list(
        "delivery_id", "last_retry_delivery_id", "retry_count")
    assert sorted((o, d) for d, o in deliveries) == sorted((o, d) for o, d, _ in entries)
    assert {count for _, _, count in entries} == {1}
    queued = [d for batch, _ in await _queued(redis) for d in batch]
    assert sorted(queued) == sorted(d for d, _ in deliveries)  # none enqueued twice
    ops = [await BulkOperation.get(id=x["operation_id"]) for x in (a, b)]
    assert sum(op.handed for op in ops) == len(ids)
    assert all(op.handed + op.skipped == len(ids) for op in ops)

    await run_bulk()

    assert len(receiver.hits("/ok")) == len(ids)
    for op in [await BulkOperation.get(id=x["operation_id"]) for x in (a, b)]:
        assert op.state == BulkState.COMPLETED
        _adds_up(op)
    assert await DeadLetter.filter(status=DeadLetterStatus.RESOLVED).count() == len(ids)


async def test_a_step_skips_entries_changed_since_the_start_and_of_disabled_endpoints(
        db, redis, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    disabled = await make_endpoint(receiver.url("/off"))
    ids = await _many(endpoint, 40)
    off = await _many(disabled, 10)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    await Endpoint.filter(id=disabled.id).update(enabled=False)
    await DeadLetter.filter(id__in=ids[:5]).update(status=DeadLetterStatus.ARCHIVED)

    assert await bulk.walk_bulk_operation({"redis": redis}, started["operation_id"]) == "walked"

    op = await BulkOperation.get(id=started["operation_id"])
    assert (op.handed, op.skipped) == (35, 15)
    statuses = dict(await DeadLetter.all().values_list("id", "status"))
    assert {statuses[i] for i in ids[5:]} == {DeadLetterStatus.RETRYING}
    assert {statuses[i] for i in off} == {DeadLetterStatus.ACTIVE}
    assert {statuses[i] for i in ids[:5]} == {DeadLetterStatus.ARCHIVED}
    assert await Delivery.filter(bulk_operation_id=op.id).count() == 35


async def test_the_first_batch_after_a_cancel_cancels_every_queued_delivery_once(
        db, redis, receiver, run_bulk, monkeypatch):
    monkeypatch.setattr(bulk, "SWEEP_CHUNK", 700)  # a few chunks
    endpoint = await make_endpoint(receiver.url("/ok"))
    ids = await _many(endpoint, 2500)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    await bulk.walk_bulk_operation({"redis": redis}, op_id)  # all handed out, none delivered
    await bulk.cancel_operation(op_id, "bob", redis=redis)
    queued = await _queued(redis)

    first, _ = queued[0]
    assert await bulk.cancel_queued(redis, op_id, first) == len(ids)

    op = await BulkOperation.get(id=op_id)
    assert op.state == BulkState.CANCELLED and op.cancelled_count == len(ids)
    await run_bulk()  # the other batches find nothing left to claim

    op = await BulkOperation.get(id=op_id)
    assert (op.completed, op.cancelled_count, op.skipped) == (0, len(ids), 0)
    _adds_up(op)
    live = await redis.hgetall(bulk.progress_key(op_id))
    assert int(live[b"cancelled"]) == len(ids)
    assert receiver.hits("/ok") == []
    assert set(await DeadLetter.filter(id__in=ids).values_list("status", "retry_count")) == {
        (DeadLetterStatus.ACTIVE, 0)}
