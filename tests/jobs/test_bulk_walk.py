"""The Retry All walker's large steps and its jobs' claims (jobs.operations.bulk_walk,
bulk_claim) against the real database and Redis: what one step hands out, what one claim
writes, cancels landing mid-step, overlapping operations, and the Redis side of a step (jobs,
figures, one progress event)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest

from jobs.operations import bulk, bulk_walk
from jobs.operations.bulk_claim import claim_entries
from jobs.queue import bulk_queue_name
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


async def _queued(redis, function: str = "deliver_entries") -> list[tuple[list[int], int]]:
    """The (entry or delivery ids, operation id) of every `function` job on the bulk lane."""
    jobs = await redis.queued_jobs(queue_name=bulk_queue_name())
    return [(j.args[0], j.args[1]) for j in jobs if j.function == function]


def _adds_up(op: BulkOperation) -> None:
    assert op.completed == op.succeeded + op.failed
    assert op.completed + op.cancelled_count + op.skipped == op.total


async def test_one_step_hands_out_its_entries_without_writing_them(db, redis, receiver,
                                                                  monkeypatch):
    monkeypatch.setenv("OBSERVATORY_BULK_BATCH_SIZE", "300")
    monkeypatch.setenv("OBSERVATORY_BULK_RATE_PER_ENDPOINT", "0")
    endpoint = await make_endpoint(receiver.url("/ok"))
    ids = await _many(endpoint, bulk_walk.WALK_BATCH + 30)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op = await BulkOperation.get(id=started["operation_id"])
    walk = bulk_walk._Walk(op, bulk_walk._Pacer.from_settings(), time.monotonic() + 60)

    assert await bulk_walk._retry_batch(redis, walk, {}, bulk_walk.WALK_BATCH)

    row = await BulkOperation.get(id=op.id)
    assert (row.cursor, row.handed, row.skipped) == (ids[bulk_walk.WALK_BATCH - 1],
                                                     bulk_walk.WALK_BATCH, 0)
    assert set(await DeadLetter.filter(id__in=ids).values_list("status", "retry_count")) == {
        (DeadLetterStatus.ACTIVE, 0)}  # the jobs claim them
    assert await Delivery.filter(bulk_operation_id=op.id).count() == 0
    # the bulk lane got every entry once, in jobs of OBSERVATORY_BULK_BATCH_SIZE, and the
    # hash the figures
    queued = await _queued(redis)
    assert sorted(e for batch, _ in queued for e in batch) == ids[:bulk_walk.WALK_BATCH]
    assert sorted(len(batch) for batch, _ in queued) == sorted(
        [300] * (bulk_walk.WALK_BATCH // 300) + [bulk_walk.WALK_BATCH % 300])
    assert {op_id for _, op_id in queued} == {op.id}
    live = await redis.hgetall(bulk.progress_key(op.id))
    assert (int(live[b"handed"]), int(live[b"skipped"])) == (bulk_walk.WALK_BATCH, 0)


def test_a_mistyped_bulk_batch_size_is_refused_with_the_rule(monkeypatch):
    from models.config import get_settings

    assert get_settings().bulk_batch_size == 200  # the default
    for bad in ("0", "1001", "two hundred"):
        monkeypatch.setenv("OBSERVATORY_BULK_BATCH_SIZE", bad)
        with pytest.raises(ValueError, match="OBSERVATORY_BULK_BATCH_SIZE: must be a whole "
                                             "number from 1 to 1000"):
            get_settings()


async def test_a_jobs_claim_creates_running_deliveries_and_links_its_entries(db, redis,
                                                                           receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    ids = await _many(endpoint, 80)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    await bulk.walk_bulk_operation({"redis": redis}, op_id)
    mine, later = ids[:50], ids[50:]

    claim = await claim_entries(mine, op_id, "agent-1", datetime.now(UTC))

    assert claim.open and claim.late_skipped == 0
    assert [d.metadata["__retry_metadata"]["dead_letter_id"] for d in claim.deliveries] == mine
    entries = {e.id: e for e in await DeadLetter.filter(id__in=ids)}
    created = {d.id: d for d in await Delivery.filter(bulk_operation_id=op_id)}
    assert sorted(created) == [d.id for d in claim.deliveries]
    for entry_id in mine:
        entry = entries[entry_id]
        assert (entry.status, entry.retry_count) == (DeadLetterStatus.RETRYING, 1)
        new = created[entry.last_retry_delivery_id]  # type: ignore[attr-defined]
        assert (new.status, new.attempts, new.claimed_by) == (DeliveryStatus.RUNNING, 1,
                                                              "agent-1")
        assert (new.retry_of_id, new.message_id, new.endpoint_id) == (  # type: ignore[attr-defined]
            entry.delivery_id, entry.message_id, endpoint.id)  # type: ignore[attr-defined]
        assert new.metadata["__retry_metadata"] == {
            "original_delivery_id": entry.delivery_id, "dead_letter_id": entry.id,  # type: ignore[attr-defined]
            "retry_count": 1, "sandbox": False, "bulk_operation_id": op_id}
    assert all(entries[i].status == DeadLetterStatus.ACTIVE for i in later)
    row = await BulkOperation.get(id=op_id)
    assert (row.handed, row.claimed, row.late_skipped) == (80, 50, 0)

    again = await claim_entries(mine, op_id, None, datetime.now(UTC))  # a duplicate job

    assert (again.deliveries, again.late_skipped) == ([], 0)  # its own: not skipped
    assert await Delivery.filter(bulk_operation_id=op_id).count() == 50


async def test_a_claim_skips_entries_changed_since_they_were_handed_out(db, redis, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    ids = await _many(endpoint, 10)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    await bulk.walk_bulk_operation({"redis": redis}, op_id)
    await DeadLetter.filter(id__in=ids[:3]).update(status=DeadLetterStatus.ARCHIVED)

    claim = await claim_entries(ids, op_id, None, datetime.now(UTC))

    assert (len(claim.deliveries), claim.late_skipped) == (7, 3)
    row = await BulkOperation.get(id=op_id)
    assert (row.claimed, row.late_skipped) == (7, 3)
    again = await claim_entries(ids, op_id, None, datetime.now(UTC))
    assert (again.deliveries, again.late_skipped) == ([], 0)  # never counted twice
    assert (await BulkOperation.get(id=op_id)).late_skipped == 3


async def test_no_claim_after_a_cancel_and_the_cancel_counts_what_was_never_claimed(
        db, redis, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    ids = await _many(endpoint, 30)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    await bulk.walk_bulk_operation({"redis": redis}, op_id)
    first = await claim_entries(ids[:10], op_id, None, datetime.now(UTC))
    assert len(first.deliveries) == 10

    view = await bulk.cancel_operation(op_id, "bob", redis=redis)
    late = await claim_entries(ids[10:], op_id, None, datetime.now(UTC))

    assert not late.open and late.deliveries == [] and late.late_skipped == 0
    assert view["state"] == "cancelling" and view["cancelled"] == 20  # 10 still in flight
    assert await DeadLetter.filter(id__in=ids[10:], status=DeadLetterStatus.ACTIVE,
                                   retry_count=0).count() == 20
    assert await Delivery.filter(bulk_operation_id=op_id).count() == 10


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
    assert op.claimed == 0
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
    for x in (a, b):  # each operation handed every entry out once, whichever walker did
        queued = [e for batch, op_id in await _queued(redis) if op_id == x["operation_id"]
                  for e in batch]
        assert sorted(queued) == ids
        assert (await BulkOperation.get(id=x["operation_id"])).handed == len(ids)

    await run_bulk()

    assert len(receiver.hits("/ok")) == len(ids)  # each entry claimed by one of them
    deliveries = await Delivery.filter(bulk_operation_id__not_isnull=True).values_list(
        "id", "retry_of_id")
    assert len(deliveries) == len(ids)
    entries = await DeadLetter.filter(id__in=ids).values_list(
        "delivery_id", "last_retry_delivery_id", "retry_count")
    assert sorted((o, d) for d, o in deliveries) == sorted((o, d) for o, d, _ in entries)
    assert {count for _, _, count in entries} == {1}
    ops = [await BulkOperation.get(id=x["operation_id"]) for x in (a, b)]
    assert sum(op.claimed for op in ops) == len(ids)
    for op in ops:
        assert op.state == BulkState.COMPLETED
        assert (op.succeeded, op.skipped) == (op.claimed, len(ids) - op.claimed)
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
    assert sorted(e for batch, _ in await _queued(redis) for e in batch) == ids[5:]


async def test_the_first_batch_after_a_cancel_cancels_every_queued_delivery_once(
        db, redis, receiver, run_bulk, monkeypatch):
    """A re-sync hands out queued deliveries (a Retry All hands out entries)."""
    from jobs.operations.resync import start_resync

    monkeypatch.setattr(bulk, "SWEEP_CHUNK", 700)  # a few chunks
    endpoint = await make_endpoint(receiver.url("/ok"))
    ids = await _many(endpoint, 2500)  # one message each, their entries active
    started = await start_resync(endpoint.id, "root", redis=redis)
    op_id = started["operation_id"]
    await bulk.walk_bulk_operation({"redis": redis}, op_id)  # all handed out, none delivered
    await bulk.cancel_operation(op_id, "bob", redis=redis)
    queued = await _queued(redis, "deliver_batch")

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
