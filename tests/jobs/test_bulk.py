"""Bulk Retry All against the real Redis, database, bulk-lane worker and a scripted receiver."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import pytest

from jobs.operations import bulk
from jobs.operations.bulk import Canary, NothingToRetryError
from jobs.queue import bulk_queue_name, queue_name
from models.audit import AuditLog
from models.bulk import BulkOperation
from models.config import get_settings
from models.dead_letters import DeadLetter
from models.deliveries import Attempt, Delivery
from models.dlq_filter import DlqFilter
from models.enums import BulkState, DeadLetterStatus, DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint
from tests.receiver import Reply


pytestmark = pytest.mark.usefixtures("unpaced")  # see tests/conftest.py


async def _entries(receiver, n: int, path: str = "/ok", **endpoint_fields):
    endpoint = await make_endpoint(receiver.url(path), **endpoint_fields)
    return endpoint, [await make_dead_letter(endpoint) for _ in range(n)]


async def _live(redis, op_id: int) -> dict[str, int]:
    raw = await redis.hgetall(bulk.progress_key(op_id))
    return {k.decode(): int(v) for k, v in raw.items()
            if k.decode() in bulk.FIGURES or k.decode() == "handed"}


def _adds_up(op: BulkOperation) -> None:
    assert op.completed == op.succeeded + op.failed
    assert op.completed + op.cancelled_count + op.skipped == op.total


async def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_retry_all_resolves_every_entry_and_the_figures_reconcile(db, redis, receiver,
                                                                         run_bulk):
    endpoint, entries = await _entries(receiver, 120)

    started = await bulk.start_retry_all(DlqFilter(endpoint_id=endpoint.id), "alice",
                                         reason="receiver fixed", redis=redis)
    await run_bulk()

    assert started["total"] == 120 and started["snapshot"] == entries[-1].id
    op = await BulkOperation.get(id=started["operation_id"])
    assert op.state == BulkState.COMPLETED and op.finished_at is not None
    assert (op.total, op.completed, op.succeeded, op.failed) == (120, 120, 120, 0)
    _adds_up(op)
    assert await _live(redis, op.id) == {"total": 120, "completed": 120, "succeeded": 120,
                                         "failed": 0, "cancelled": 0, "skipped": 0,
                                         "handed": 120}
    assert 0 < await redis.ttl(bulk.progress_key(op.id)) <= bulk.HASH_TTL_S
    assert await DeadLetter.filter(status=DeadLetterStatus.RESOLVED).count() == 120
    assert len(receiver.hits("/ok")) == 120
    retries = await Delivery.filter(bulk_operation_id=op.id)
    assert len(retries) == 120 and all(d.status == DeliveryStatus.SUCCEEDED for d in retries)
    by_entry = {e.id: e for e in await DeadLetter.all()}
    for d in retries:
        meta = d.metadata["__retry_metadata"]
        entry = by_entry[meta["dead_letter_id"]]
        assert d.retry_of_id == entry.delivery_id == meta["original_delivery_id"]  # type: ignore[attr-defined]
        assert meta["bulk_operation_id"] == op.id and meta["sandbox"] is False
        assert entry.last_retry_delivery_id == d.id  # type: ignore[attr-defined]
        assert entry.retry_count == meta["retry_count"] == 1
    audits = await AuditLog.all()
    assert [(a.action, a.actor, a.target_id) for a in audits] == [
        ("dlq.retry_all", "alice", str(op.id))]
    assert audits[0].details["total"] == 120 and audits[0].details["reason"] == "receiver fixed"
    assert audits[0].details["scope"] == {"endpoint_id": endpoint.id, "status": ["active"],
                                          "max_id": entries[-1].id}


async def test_progress_and_events_are_once_per_batch_not_per_delivery(db, redis, receiver,
                                                                       run_bulk, monkeypatch):
    monkeypatch.setenv("OBSERVATORY_BULK_BATCH_SIZE", "50")
    endpoint, entries = await _entries(receiver, 120)
    events: list[dict] = []
    pubsub = redis.pubsub()
    await pubsub.subscribe(get_settings().events_channel)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    await redis.config_resetstat()

    await run_bulk()

    stats = await redis.info("commandstats")
    hincrby_calls = stats.get("cmdstat_hincrby", {}).get("calls", 0)
    publish_calls = stats.get("cmdstat_publish", {}).get("calls", 0)
    deadline = time.monotonic() + 5  # the subscription buffered everything published
    while time.monotonic() < deadline:  # until it is drained (batches run concurrently:
        # the one finishing the operation may publish before the others)
        if m := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3):
            events.append(json.loads(m["data"]))
        elif any(e.get("state") == "completed" for e in events):
            break
    await pubsub.aclose()
    progress = [e for e in events if e["type"] == "bulk.progress" and "completed" in e]
    # 120 deliveries in batches of 50: three batches, three counters each (per delivery: 360)
    assert 3 * 3 <= hincrby_calls <= 3 * 6
    assert 3 <= len(progress) <= 8
    assert max(e["completed"] for e in progress) == 120
    assert [e["state"] for e in progress].count("completed") == 1
    assert (await BulkOperation.get(id=started["operation_id"])).state == BulkState.COMPLETED
    # the entries resolved by a batch are one event (one PUBLISH per entry was most of the
    # bulk lane's Redis traffic)
    resolved = [e for e in events if e["type"] == "dlq.changed" and e["status"] == "resolved"]
    assert sorted(i for e in resolved for i in e["ids"]) == [e.id for e in entries]
    assert 3 <= len(resolved) <= 8
    assert publish_calls < 40  # 120 with an event per entry


async def test_a_failed_bulk_retry_gets_one_attempt_and_its_entry_goes_back_to_active(
        db, redis, receiver, run_bulk):
    receiver.script("/down", Reply(status=500))
    endpoint, entries = await _entries(receiver, 4, "/down")

    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    await run_bulk()

    op = await BulkOperation.get(id=started["operation_id"])
    assert op.state == BulkState.COMPLETED
    assert (op.completed, op.succeeded, op.failed) == (4, 0, 4)
    _adds_up(op)
    assert len(receiver.hits("/down")) == 4  # no policy retries
    assert await redis.zcard(queue_name()) == 0 and await redis.zcard(bulk_queue_name()) == 0
    for entry in await DeadLetter.all():
        assert entry.status == DeadLetterStatus.ACTIVE and entry.retry_count == 1
        assert len(entry.error_history) == 4  # three from before, the bulk attempt appended
        assert entry.error_history[-1]["status_code"] == 500
    assert await Attempt.all().count() == 4
    assert {d.status for d in await Delivery.filter(bulk_operation_id=op.id)} == {
        DeliveryStatus.FAILED}


async def test_cancel_before_the_batches_start_cancels_their_entries(db, redis, receiver,
                                                                       run_bulk):
    await _entries(receiver, 30)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    await bulk.walk_bulk_operation({"redis": redis}, op_id)  # handed out, nothing claimed
    assert (await BulkOperation.get(id=op_id)).handed == 30
    assert await _queued_entries(redis) == 30

    view = await bulk.cancel_operation(op_id, "bob", reason="wrong scope", redis=redis)
    assert view["state"] == "cancelled"  # nothing was in flight: it ends at once
    await run_bulk()  # the jobs find the operation cancelled and claim nothing

    op = await BulkOperation.get(id=op_id)
    assert op.state == BulkState.CANCELLED and op.cancelled
    assert (op.completed, op.cancelled_count, op.skipped, op.claimed) == (0, 30, 0, 0)
    _adds_up(op)
    assert receiver.hits("/ok") == []
    assert await Delivery.filter(bulk_operation_id=op_id).count() == 0
    entries = await DeadLetter.all()
    assert all(e.status == DeadLetterStatus.ACTIVE and e.retry_count == 0 for e in entries)
    assert [a.action for a in await AuditLog.all().order_by("id")] == [
        "dlq.retry_all", "bulk.cancel"]


async def _queued_entries(redis) -> int:
    """Entries waiting on the bulk lane in `deliver_entries` jobs."""
    jobs = await redis.queued_jobs(queue_name=bulk_queue_name())
    return sum(len(j.args[0]) for j in jobs if j.function == "deliver_entries")


async def test_cancel_mid_way_stops_new_work_and_leaves_nothing_lost(db, redis, receiver,
                                                                      run_bulk, monkeypatch):
    monkeypatch.setenv("OBSERVATORY_BULK_RATE_PER_ENDPOINT", "20")  # ~2 s for 40 entries
    receiver.script("/ok", Reply(delay_s=0.1))
    await _entries(receiver, 40)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    worker = asyncio.create_task(run_bulk())

    await wait_for(lambda: _n(len(receiver.hits("/ok")) >= 4))
    await bulk.cancel_operation(op_id, "bob", redis=redis)
    hits_at_cancel = len(receiver.hits("/ok"))
    await asyncio.wait_for(worker, 30)

    op = await BulkOperation.get(id=op_id)
    assert op.state == BulkState.CANCELLED
    _adds_up(op)
    hits = len(receiver.hits("/ok"))
    assert op.succeeded == hits and op.failed == 0
    assert hits <= hits_at_cancel + 4  # only those in flight (one paced slice) finished
    assert op.cancelled_count > 0
    resolved = await DeadLetter.filter(status=DeadLetterStatus.RESOLVED).count()
    active = await DeadLetter.filter(status=DeadLetterStatus.ACTIVE).count()
    assert resolved == op.succeeded and active == op.cancelled_count and resolved + active == 40
    cancelled = await Delivery.filter(status=DeliveryStatus.CANCELLED).count()
    untouched, unclaimed = 40 - op.handed, op.handed - op.claimed - op.late_skipped
    assert cancelled + untouched + unclaimed == op.cancelled_count
    assert await Delivery.filter(bulk_operation_id=op_id, status__in=[
        DeliveryStatus.QUEUED, DeliveryStatus.RUNNING]).count() == 0


async def _n(value: bool) -> bool:
    return value


async def test_pause_stops_handing_out_work_and_resume_finishes_it(db, redis, receiver,
                                                                    run_bulk, monkeypatch):
    monkeypatch.setenv("OBSERVATORY_BULK_RATE_PER_ENDPOINT", "20")  # batches of 20, ~3 s
    await _entries(receiver, 60)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    worker = asyncio.create_task(run_bulk())

    async def handed() -> int:
        return (await BulkOperation.get(id=op_id)).handed

    await wait_for(lambda: _n_async(handed(), lambda h: h > 0))
    paused = await bulk.pause_operation(op_id, "bob", redis=redis)
    assert paused["state"] == "paused" and paused["eta_s"] is None
    await asyncio.sleep(0.8)  # a batch being handed out when the pause came may still land
    before = await handed()
    await asyncio.sleep(1.5)
    assert await handed() == before < 60
    assert not worker.done()

    await bulk.resume_operation(op_id, "bob", redis=redis)
    await asyncio.wait_for(worker, 30)

    op = await BulkOperation.get(id=op_id)
    assert op.state == BulkState.COMPLETED and op.succeeded == 60
    _adds_up(op)
    assert len(receiver.hits("/ok")) == 60
    assert [a.action for a in await AuditLog.all().order_by("id")] == [
        "dlq.retry_all", "bulk.pause", "bulk.resume"]


async def _n_async(value, check) -> bool:
    return check(await value)


async def test_entries_failing_after_the_preview_are_not_swept_in(db, redis, receiver,
                                                                   run_bulk):
    endpoint, first = await _entries(receiver, 5)
    preview = await bulk.preview(DlqFilter(endpoint_id=endpoint.id))
    later = [await make_dead_letter(endpoint) for _ in range(3)]

    started = await bulk.start_retry_all(DlqFilter(endpoint_id=endpoint.id), "alice",
                                         snapshot=preview["snapshot"], redis=redis)
    await run_bulk()

    assert preview == {"total": 5, "snapshot": first[-1].id}
    assert started["total"] == 5
    statuses = {e.id: e.status for e in await DeadLetter.all()}
    assert all(statuses[e.id] == DeadLetterStatus.RESOLVED for e in first)
    assert all(statuses[e.id] == DeadLetterStatus.ACTIVE for e in later)
    assert len(receiver.hits("/ok")) == 5


async def test_a_second_retry_all_skips_entries_already_being_retried(db, redis, receiver,
                                                                       run_bulk):
    await _entries(receiver, 20)
    a = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    b = await bulk.start_retry_all(DlqFilter(), "bob", redis=redis)  # both confirmed 20

    await run_bulk()  # both walkers run concurrently

    assert len(receiver.hits("/ok")) == 20  # nothing delivered twice
    assert await Delivery.filter(bulk_operation_id__not_isnull=True).count() == 20
    ops = [await BulkOperation.get(id=x["operation_id"]) for x in (a, b)]
    assert sum(op.claimed for op in ops) == 20  # each entry claimed by one of them
    for op in ops:
        assert op.state == BulkState.COMPLETED and op.total == 20
        assert op.skipped == 20 - op.claimed == 20 - op.succeeded
        _adds_up(op)


async def test_retry_all_over_entries_in_flight_has_nothing_to_retry(db, redis, receiver):
    from jobs.operations.bulk_claim import claim_entries

    _, entries = await _entries(receiver, 3)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    await bulk.walk_bulk_operation({"redis": redis}, started["operation_id"])
    claim = await claim_entries([e.id for e in entries], started["operation_id"], None,
                                datetime.now(UTC))  # as its bulk-lane job does
    assert len(claim.deliveries) == 3

    with pytest.raises(NothingToRetryError, match="nothing to retry"):
        await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    assert await BulkOperation.all().count() == 1


async def test_two_walkers_of_one_operation_hand_each_entry_out_once(db, redis, receiver):
    await _entries(receiver, 120)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    ctx = {"redis": redis}

    results = await asyncio.gather(*(bulk.walk_bulk_operation(ctx, started["operation_id"])
                                     for _ in range(3)))

    assert "walked" in results
    op = await BulkOperation.get(id=started["operation_id"])
    assert op.handed == 120 and op.skipped == 0 and op.walked_at is not None
    jobs = await redis.queued_jobs(queue_name=bulk_queue_name())
    handed = [i for j in jobs if j.function == "deliver_entries" for i in j.args[0]]
    assert sorted(handed) == sorted(set(handed)) and len(handed) == 120


async def test_canary_halts_when_too_many_fail_and_resume_overrides_it(db, redis, receiver,
                                                                       run_bulk):
    receiver.script("/ok", Reply(status=500))
    await _entries(receiver, 30)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis,
                                         canary=Canary(count=5, max_failure_pct=20))
    op_id = started["operation_id"]

    await run_bulk()

    op = await BulkOperation.get(id=op_id)
    assert op.state == BulkState.HALTED and op.handed == 5
    assert op.halted_reason and "5 of the first 5" in op.halted_reason
    view = await bulk.get_operation(op_id, redis=redis)
    assert (view["state"], view["failed"], view["completed"]) == ("halted", 5, 5)
    assert view["halted_reason"] == op.halted_reason
    assert len(receiver.hits("/ok")) == 5
    assert await DeadLetter.filter(status=DeadLetterStatus.ACTIVE, retry_count=0).count() == 25
    assert await AuditLog.filter(action="bulk.halt", actor="system").count() == 1

    receiver.script("/ok", Reply(status=200))
    await bulk.resume_operation(op_id, "bob", reason="receiver fixed", redis=redis)
    await run_bulk()

    op = await BulkOperation.get(id=op_id)
    assert op.state == BulkState.COMPLETED and (op.succeeded, op.failed) == (25, 5)
    _adds_up(op)


async def test_canary_that_passes_goes_on_with_the_rest(db, redis, receiver, run_bulk):
    await _entries(receiver, 30)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis,
                                         canary=Canary(count=5, max_failure_pct=20))
    await run_bulk()

    op = await BulkOperation.get(id=started["operation_id"])
    assert op.state == BulkState.COMPLETED and op.succeeded == 30 and op.canary_passed


async def test_entries_of_a_disabled_endpoint_are_skipped_and_left_alone(db, redis, receiver,
                                                                         run_bulk):
    _, ok = await _entries(receiver, 2)
    _, off = await _entries(receiver, 3, "/off", enabled=False)

    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    await run_bulk()

    op = await BulkOperation.get(id=started["operation_id"])
    assert op.state == BulkState.COMPLETED
    assert (op.total, op.succeeded, op.skipped) == (5, 2, 3)
    _adds_up(op)
    for entry in await DeadLetter.filter(id__in=[e.id for e in off]):
        assert entry.status == DeadLetterStatus.ACTIVE and entry.retry_count == 0
    assert receiver.hits("/off") == []


async def test_an_endpoints_deliveries_are_paced_at_the_configured_rate(db, redis, receiver,
                                                                        monkeypatch):
    monkeypatch.setenv("OBSERVATORY_BULK_RATE_PER_ENDPOINT", "20")
    await _entries(receiver, 20)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    await redis.delete(bulk_queue_name())  # the walker's own job: it is run directly below

    assert await bulk.walk_bulk_operation({"redis": redis}, started["operation_id"]) == "walked"

    scores = [s for _, s in await redis.zrange(bulk_queue_name(), 0, -1, withscores=True)]
    assert len(scores) == 5  # 4 deliveries (0.2 s of 20/s) per job
    assert 750 <= max(scores) - min(scores) <= 1000
    assert await redis.zcard(queue_name()) == 0  # never on the live lane


async def test_illegal_control_actions_are_refused(db, redis, receiver, run_bulk):
    from jobs.errors import ConflictError, NotFoundError

    await _entries(receiver, 2)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    with pytest.raises(ConflictError, match="only paused, halted operations can be resumed"):
        await bulk.resume_operation(op_id, "bob", redis=redis)
    await run_bulk()

    for action in (bulk.cancel_operation, bulk.pause_operation, bulk.resume_operation):
        with pytest.raises(ConflictError, match=f"operation {op_id} is completed"):
            await action(op_id, "bob", redis=redis)
    with pytest.raises(NotFoundError):
        await bulk.cancel_operation(op_id + 1, "bob", redis=redis)
    assert await AuditLog.filter(action__startswith="bulk.").count() == 0


async def test_reason_can_be_made_mandatory(db, redis, receiver, monkeypatch):
    from jobs.errors import ValidationError

    monkeypatch.setenv("OBSERVATORY_REQUIRE_REASON", "1")
    await _entries(receiver, 2)
    with pytest.raises(ValidationError, match="reason"):
        await bulk.start_retry_all(DlqFilter(), "alice", reason="  ", redis=redis)
    assert await BulkOperation.all().count() == 0
    assert await DeadLetter.filter(status=DeadLetterStatus.ACTIVE).count() == 2


async def test_a_bulk_worker_claims_only_a_few_batches_beyond_its_endpoints_cap(
        db, redis, receiver, run_bulk, monkeypatch):
    # 300 entries, six jobs of 50 at once, an endpoint taking one at a time: the worker holds
    # its cap and two batches claimed, the rest wait unclaimed
    from jobs import deliver

    monkeypatch.setenv("OBSERVATORY_BULK_BATCH_SIZE", "50")

    receiver.script("/ok", Reply(delay_s=0.005))
    await _entries(receiver, 300, max_in_flight=1)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    worker = asyncio.create_task(run_bulk())
    most = 0
    while not worker.done():
        most = max(most, await Delivery.filter(status=DeliveryStatus.RUNNING).count())
        await asyncio.sleep(0.01)
    await worker

    batch = get_settings().bulk_batch_size
    limit = 1 + deliver.CLAIM_AHEAD_BATCHES * batch
    # the gate counts a delivery until its attempt ends; the row stays `running` until its
    # batch is recorded, so one more batch may show (300 when every job claimed at once)
    assert 1 <= most <= limit + batch
    op = await BulkOperation.get(id=started["operation_id"])
    assert op.state == BulkState.COMPLETED and op.succeeded == 300
    _adds_up(op)
    assert len(receiver.hits("/ok")) == 300


async def test_a_bulk_job_whose_endpoint_stays_full_goes_back_to_the_queue_unclaimed(
        db, redis, receiver, monkeypatch):
    # the endpoint's gate stays full (a slow receiver holds every place): the job does not
    # hold the lane's job slot waiting, it is enqueued again, deferred, and claims nothing
    from jobs import deliver
    from jobs.http import make_client
    from models.deliveries import Message

    monkeypatch.setattr(deliver, "CLAIM_WAIT_S", 0.05)
    endpoint = await make_endpoint(receiver.url("/ok"))
    message = await Message.create(app_id=endpoint.app_id, event_type="x", payload={})  # type: ignore[attr-defined]
    ids = [(await Delivery.create(message=message, endpoint=endpoint)).id for _ in range(3)]
    async with make_client() as client:
        ctx = {"redis": redis, "http": client}
        deliver.init_context(ctx)
        deliver._claim_gate(ctx, endpoint.id).taken = 10_000  # held by attempts in flight
        before = time.time()
        counts = await deliver.deliver_batch(ctx, ids, None, endpoint.id)
        await deliver.close_context(ctx)

    assert counts == {"claimed": 0, "requeued": 3}
    assert {d.status for d in await Delivery.filter(id__in=ids)} == {DeliveryStatus.QUEUED}
    queued = await redis.queued_jobs(queue_name=bulk_queue_name())
    assert [(j.function, j.args) for j in queued] == [("deliver_batch", (ids, None, endpoint.id))]
    due = await redis.zscore(bulk_queue_name(), queued[0].job_id)
    assert due / 1000 >= before + deliver.CLAIM_REQUEUE_S - 0.01
    assert receiver.hits("/ok") == []


async def test_bulk_deliveries_asking_at_once_share_one_read_of_the_cancel_flag(
        redis, monkeypatch):
    # the 64 deliveries in flight ask when they get their slots: one Redis read serves those
    # that ask while it is on its way, and a cancel is seen once the flag's TTL has passed.
    # jobs.deliver's clock is the test's (a busy machine can stall the 50 asks for longer than
    # the 50 ms TTL, and then a second read is right)
    from types import SimpleNamespace

    from jobs import deliver

    clock = [1000.0]
    monkeypatch.setattr(deliver, "time", SimpleNamespace(monotonic=lambda: clock[0],
                                                         time=time.time))
    reads = 0
    real_hget = redis.hget

    async def counted_hget(*args, **kwargs):
        nonlocal reads
        reads += 1
        return await real_hget(*args, **kwargs)

    redis.hget = counted_hget
    ctx = {"redis": redis, "shared": {}}
    asked = await asyncio.gather(*(deliver._operation_cancelled(ctx, 7) for _ in range(50)))
    assert asked == [False] * 50 and reads == 1
    clock[0] += bulk.CANCEL_FLAG_TTL_S / 2  # still trusted
    assert await deliver._operation_cancelled(ctx, 7) is False and reads == 1

    await redis.hset(bulk.progress_key(7), "state", BulkState.CANCELLING.value)
    clock[0] += bulk.CANCEL_FLAG_TTL_S  # the read is now too old to trust
    asked = await asyncio.gather(*(deliver._operation_cancelled(ctx, 7) for _ in range(50)))
    assert asked == [True] * 50 and reads == 2
    await redis.hdel(bulk.progress_key(7), "state")  # a cancel is for good: no read again
    clock[0] += bulk.CANCEL_FLAG_TTL_S * 2
    assert await deliver._operation_cancelled(ctx, 7) is True and reads == 2


async def test_once_a_cancel_answered_no_worker_trusts_an_earlier_read_of_its_flag(
        db, redis, receiver):
    # a worker read the flag (not cancelled) just before the cancel: the cancel answers only
    # once that read may no longer be trusted, so no delivery starts after the answer
    from jobs import deliver
    from jobs.operations.bulk_claim import claim_entries

    _, entries = await _entries(receiver, 3)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    await bulk.walk_bulk_operation({"redis": redis}, op_id)
    claim = await claim_entries([e.id for e in entries], op_id, None, datetime.now(UTC))
    assert len(claim.deliveries) == 3  # claimed, waiting for their endpoint's slot
    ctx = {"redis": redis, "shared": {}}
    assert await deliver._operation_cancelled(ctx, op_id) is False

    view = await bulk.cancel_operation(op_id, "bob", redis=redis)

    assert view["state"] == "cancelling"
    assert await deliver._operation_cancelled(ctx, op_id) is True


async def test_deliveries_waiting_for_their_endpoints_slot_do_not_start_after_a_cancel(
        db, redis, receiver, run_bulk):
    # one batch claims all ten, but the endpoint takes one at a time, 0.3 s each: after the
    # cancel, those still waiting for the slot are handed back and cancelled, never sent
    receiver.script("/ok", Reply(delay_s=0.3))
    await _entries(receiver, 10, max_in_flight=1)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    worker = asyncio.create_task(run_bulk())

    await wait_for(lambda: _n(len(receiver.hits("/ok")) >= 1))
    await bulk.cancel_operation(op_id, "bob", redis=redis)
    hits_at_cancel = len(receiver.hits("/ok"))
    await asyncio.wait_for(worker, 30)

    op = await BulkOperation.get(id=op_id)
    assert op.state == BulkState.CANCELLED
    _adds_up(op)
    hits = len(receiver.hits("/ok"))
    assert hits <= hits_at_cancel + 1  # the one holding the slot, and at most one more
    assert op.succeeded == hits and op.cancelled_count == 10 - hits
    assert await Attempt.filter(delivery__bulk_operation_id=op_id).count() == hits
    statuses = [d.status for d in await Delivery.filter(bulk_operation_id=op_id)]
    assert sorted(statuses) == sorted([DeliveryStatus.SUCCEEDED] * hits
                                      + [DeliveryStatus.CANCELLED] * (10 - hits))
    assert all(d.attempts == (1 if d.status == DeliveryStatus.SUCCEEDED else 0)
               for d in await Delivery.filter(bulk_operation_id=op_id))
    active = await DeadLetter.filter(status=DeadLetterStatus.ACTIVE).count()
    assert active == op.cancelled_count


async def test_a_retry_all_whose_jobs_redis_lost_is_recovered_and_finishes(db, redis, receiver,
                                                                         run_bulk, monkeypatch):
    from jobs import deliver
    from jobs.cron import reconcile_deliveries
    from jobs.http import make_client

    monkeypatch.setenv("OBSERVATORY_BULK_BATCH_SIZE", "50")  # one job of three runs

    _, entries = await _entries(receiver, 120)
    started = await bulk.start_retry_all(DlqFilter(), "alice", redis=redis)
    op_id = started["operation_id"]
    await bulk.walk_bulk_operation({"redis": redis}, op_id)  # every entry handed out in jobs
    job = next(j for j in await redis.queued_jobs(queue_name=bulk_queue_name())
               if j.function == "deliver_entries")
    async with make_client() as client:  # one job ran before Redis lost its data
        ctx = {"redis": redis, "http": client}
        deliver.init_context(ctx)
        assert (await deliver.deliver_entries(ctx, *job.args))["claimed"] == len(job.args[0])
        await deliver.close_context(ctx)
    await redis.flushdb()  # Redis restarted without persistence: the jobs and the live hash

    assert (await reconcile_deliveries({"redis": redis}))["operations"] == 1

    live = await _live(redis, op_id)
    assert (live["total"], live["succeeded"], live["completed"]) == (120, len(job.args[0]),
                                                                     len(job.args[0]))
    assert (await reconcile_deliveries({"redis": redis}))["operations"] == 0  # once
    await run_bulk()

    op = await BulkOperation.get(id=op_id)
    assert op.state == BulkState.COMPLETED and op.succeeded == 120
    _adds_up(op)
    assert len(receiver.hits("/ok")) == 120  # none twice
    assert await DeadLetter.filter(status=DeadLetterStatus.RESOLVED).count() == 120
