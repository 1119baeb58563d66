"""Cron jobs: runs are recorded, failures kept, expressions mapped to arq, reconciler recovers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobs.cron import CronSpec, arq_cron_jobs, reconcile_deliveries, recorded, register_cron_jobs
from jobs.operations.publish import publish_message
from jobs.queue import bulk_queue_name, queue_name
from models.bulk import BulkOperation
from models import queries
from models.cron import CronJob, CronRun
from models.deliveries import Delivery, Message
from models.enums import BulkKind, CronRunStatus, DeliveryStatus
from tests.factories import make_endpoint


async def _ok(ctx):
    return {"done": 1}


async def _broken(ctx):
    raise RuntimeError("disk full")


async def test_successful_run_is_recorded(db, redis):
    await recorded(CronSpec("tidy", "*/5 * * * *", "", _ok))({"redis": redis})
    [run] = await CronRun.all()
    assert run.status == CronRunStatus.SUCCEEDED and run.duration_ms is not None
    job = await CronJob.get(name="tidy")
    assert job.last_run_at and job.next_run_at and job.next_run_at.minute % 5 == 0


async def test_failed_run_keeps_the_error(db, redis):
    with pytest.raises(RuntimeError):
        await recorded(CronSpec("tidy", "* * * * *", "", _broken))({"redis": redis})
    [run] = await CronRun.all()
    assert run.status == CronRunStatus.FAILED and run.error == "RuntimeError: disk full"


async def test_schedule_lists_upcoming_and_recent_runs(db, redis):
    await register_cron_jobs()
    with pytest.raises(RuntimeError):
        await recorded(CronSpec("record_fleet", "*/2 * * * *", "", _broken))({"redis": redis})
    rows = await queries.list_cron_runs()
    assert {r["job"] for r in rows if r["status"] == "pending"} == {
        "reconcile_deliveries", "record_fleet"}
    [failed] = [r for r in rows if r["status"] == "failed"]
    assert failed["job"] == "record_fleet" and failed["error"] == "RuntimeError: disk full"


def test_expressions_map_to_arq_fields():
    specs = [CronSpec("a", "*/15 3 * * 1-5", "", _ok), CronSpec("b", "0 0 * * 0", "", _ok)]
    a, b = arq_cron_jobs(specs)
    assert a.minute == {0, 15, 30, 45} and a.hour == {3} and a.weekday == {0, 1, 2, 3, 4}
    assert b.weekday == {6} and a.second == 0  # cron Sunday=0 is arq's 6


async def test_reconciler_requeues_due_deliveries_after_redis_lost_them(db, redis, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    result = await publish_message(endpoint.app_id, "x", {}, redis=redis)
    delivery_id = result["deliveries"][0]["id"]
    await redis.flushall()  # Redis restarted without persistence
    assert await redis.zcard(queue_name()) == 0
    await Delivery.filter(id=delivery_id).update(created_at=datetime.now(UTC) - timedelta(minutes=5))

    assert await reconcile_deliveries({"redis": redis}) == {"requeued": 1, "recovered": 0}
    assert await redis.zcard(queue_name()) == 1
    assert (await Delivery.get(id=delivery_id)).status == DeliveryStatus.QUEUED
    # a second sweep while the job exists enqueues nothing new
    await reconcile_deliveries({"redis": redis})
    assert await redis.zcard(queue_name()) == 1


async def test_reconciler_hands_lost_bulk_deliveries_back_to_the_bulk_lane(db, redis):
    endpoint = await make_endpoint("http://127.0.0.1:9/hook")
    op = await BulkOperation.create(kind=BulkKind.RETRY, actor="ops", total=2)
    message = await Message.create(app_id=endpoint.app_id, event_type="x", payload={})
    ids = [(await Delivery.create(message=message, endpoint=endpoint, bulk_operation=op)).id
           for _ in range(2)]
    await Delivery.filter(id__in=ids).update(created_at=datetime.now(UTC) - timedelta(minutes=5))

    assert await reconcile_deliveries({"redis": redis}) == {"requeued": 2, "recovered": 0}

    assert await redis.zcard(queue_name()) == 0  # not the live lane: no pacing, no cancel check
    [job] = await redis.queued_jobs(queue_name=bulk_queue_name())
    assert (job.function, job.args) == ("deliver_batch", (ids, op.id))
