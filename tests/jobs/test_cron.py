"""Cron jobs: one run per tick, missed ticks with their reason, retry, run now, pause/resume,
retention, the arq mapping and the reconciler. Real database and Redis throughout."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from arq.worker import func

from jobs import cron as cron_module
from jobs.cron import (CronSpec, arq_cron_jobs, purge_expired, reconcile_deliveries, recorded,
                       register_cron_jobs, retire_undeclared_cron_jobs, run_cron_job,
                       start_tick, tick_of)
from jobs.cron_watch import cron_job_id, detect_missed_ticks
from jobs.errors import ConflictError, NotFoundError
from jobs.metrics import cron_metric_keys
from jobs.operations import cron as ops
from jobs.operations.publish import publish_message
from jobs.queue import bulk_queue_name, queue_name
from jobs.worker import WorkerSettings
from models import queries
from models.agents import Agent
from models.audit import AuditLog
from models.bulk import BulkOperation
from models.cron import CronJob, CronRun
from models.dead_letters import DeadLetter
from models.deliveries import Delivery, Message
from models.enums import BulkKind, CronRunStatus, DeadLetterStatus, DeliveryStatus
from tests.factories import make_dead_letter, make_endpoint

CALLS: list[str] = []


async def _ok(ctx):
    CALLS.append("ok")
    return {"done": 1}


async def _broken(ctx):
    CALLS.append("broken")
    raise RuntimeError("disk full")


async def _slow(ctx):
    CALLS.append("slow")
    await asyncio.sleep(0.3)


OK = CronSpec("tidy", "* * * * *", "tidy up", _ok)
BROKEN = CronSpec("flaky", "* * * * *", "fails", _broken)
SLOW = CronSpec("slow", "* * * * *", "slow", _slow)


@pytest.fixture(autouse=True)
def _calls():
    CALLS.clear()


def _tick(minutes_ago: int = 0) -> datetime:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return now - timedelta(minutes=minutes_ago)


def _now() -> datetime:
    """A tick that is due right now (drift well inside any grace window)."""
    return datetime.now(UTC).replace(microsecond=0)


def _ctx(redis, spec: CronSpec, tick: datetime) -> dict:
    return {"redis": redis, "job_id": cron_job_id(spec.name, tick)}


def _worker_functions() -> list:
    return [*WorkerSettings.functions, func(run_cron_job, name="run_cron_job")]


# --- one run per tick -----------------------------------------------------------------------


async def test_successful_run_is_recorded_with_its_drift(db, redis):
    tick = _now()
    await recorded(OK)(_ctx(redis, OK, tick))
    [run] = await CronRun.all()
    assert run.status == CronRunStatus.SUCCEEDED and run.duration_ms is not None
    assert run.scheduled_at == tick and run.trigger == "schedule"
    assert 0 <= run.drift_ms <= 61_000
    job = await CronJob.get(name="tidy")
    assert job.last_run_at and job.next_run_at and job.next_run_at > tick
    drift = await redis.hget(cron_metric_keys()[1], "tidy")
    assert abs(float(drift) - run.drift_ms / 1000) < 0.01


async def test_failed_run_keeps_the_error(db, redis):
    with pytest.raises(RuntimeError):
        await recorded(BROKEN)(_ctx(redis, BROKEN, _now()))
    [run] = await CronRun.all()
    assert run.status == CronRunStatus.FAILED and run.error == "RuntimeError: disk full"


async def test_two_workers_recording_the_same_tick_run_it_once(db, redis):
    tick = _now()
    await register_cron_jobs([SLOW])
    await asyncio.gather(*(recorded(SLOW)(_ctx(redis, SLOW, tick)) for _ in range(4)))
    assert CALLS == ["slow"]
    [run] = await CronRun.all()
    assert run.status == CronRunStatus.SUCCEEDED


async def test_a_tick_whose_pending_row_exists_is_claimed_not_duplicated(db, redis):
    tick = _now()
    await register_cron_jobs([OK])
    await CronRun.create(job_id="tidy", scheduled_at=tick, status=CronRunStatus.PENDING)
    await recorded(OK)(_ctx(redis, OK, tick))
    [run] = await CronRun.all()
    assert run.status == CronRunStatus.SUCCEEDED and CALLS == ["ok"]


async def test_a_late_start_is_recorded_missed_and_not_run(db, redis):
    await register_cron_jobs([CronSpec("tidy", "* * * * *", "", _ok, grace_s=5)])
    tick = _tick(minutes_ago=2)
    assert await recorded(OK)(_ctx(redis, OK, tick)) is None
    [run] = await CronRun.all()
    assert run.status == CronRunStatus.MISSED and CALLS == []
    assert "after its tick, past its 5 s grace window (workers busy)" in run.error
    assert await redis.hget(cron_metric_keys()[0], "tidy") == b"1"


async def test_a_tick_while_the_previous_run_is_running_is_missed(db, redis):
    await register_cron_jobs([OK])
    busy = await CronRun.create(job_id="tidy", scheduled_at=_tick(1), status="running",
                                started_at=datetime.now(UTC) - timedelta(seconds=50))
    await recorded(OK)(_ctx(redis, OK, _now()))
    missed = await CronRun.get(status="missed")
    assert missed.status == CronRunStatus.MISSED and CALLS == []
    assert missed.error == f"previous run #{busy.id} was still running"


async def test_a_paused_job_skips_its_ticks_without_a_row(db, redis):
    await register_cron_jobs([OK])
    await ops.pause("tidy", "alice", redis=redis)
    assert await recorded(OK)(_ctx(redis, OK, _now())) is None
    assert CALLS == [] and await CronRun.all().count() == 0


# --- the missed-tick sweep ------------------------------------------------------------------


async def _job_checked_since(minutes: int, expression: str = "* * * * *") -> CronJob:
    await register_cron_jobs([CronSpec("tidy", expression, "", _ok, grace_s=10)])
    await CronJob.filter(name="tidy").update(checked_until=_tick(minutes) - timedelta(seconds=1))
    return await CronJob.get(name="tidy")


async def test_sweep_records_ticks_nobody_ran_as_missed_no_worker_alive(db, redis):
    await _job_checked_since(3)
    await CronRun.create(job_id="tidy", scheduled_at=_tick(2), status="succeeded")
    now = _tick() + timedelta(seconds=30)
    result = await detect_missed_ticks(redis, now)
    missed = await CronRun.filter(status="missed").order_by("scheduled_at")
    assert [r.scheduled_at for r in missed] == [_tick(3), _tick(1), _tick()]
    assert {r.error for r in missed} == {"no worker alive at the tick"}
    assert result["missed"] == 3
    assert await redis.hget(cron_metric_keys()[0], "tidy") == b"3"
    # a second sweep records nothing twice
    assert (await detect_missed_ticks(redis, now))["missed"] == 0
    assert await CronRun.filter(status="missed").count() == 3


async def test_sweep_names_the_reason_it_can_see(db, redis):
    await _job_checked_since(2)
    now = _tick() + timedelta(seconds=30)
    await Agent.create(id="w1", last_seen=now, started_at=_tick(5))  # alive all along
    await Agent.filter(id="w1").update(started_at=_tick(5))
    # the tick two minutes ago still waits in the queue: workers busy
    await redis.zadd(queue_name(), {cron_job_id("tidy", _tick(2)): 1})
    await detect_missed_ticks(redis, now)
    reasons = dict(await CronRun.filter(status="missed").values_list("scheduled_at", "error"))
    assert reasons[_tick(2)].startswith("workers busy: the tick waited in the queue")
    assert reasons[_tick(1)] == "no worker scheduled the tick (a worker was starting or " \
                                "restarting)"


async def test_sweep_marks_due_ticks_pending_then_missed_after_grace(db, redis):
    await _job_checked_since(0)
    await detect_missed_ticks(redis, _tick() + timedelta(seconds=5))
    [run] = await CronRun.all()
    assert run.status == CronRunStatus.PENDING and run.scheduled_at == _tick()
    await detect_missed_ticks(redis, _tick() + timedelta(seconds=20))
    assert (await CronRun.get(id=run.id)).status == CronRunStatus.MISSED


async def test_sweep_does_not_count_paused_ticks_as_missed(db, redis):
    await _job_checked_since(5)
    await ops.pause("tidy", "alice", redis=redis)
    await detect_missed_ticks(redis, _tick() + timedelta(seconds=30))
    await ops.resume("tidy", "alice", redis=redis)
    await detect_missed_ticks(redis, datetime.now(UTC) + timedelta(seconds=1))
    assert await CronRun.filter(status="missed").count() == 0


async def test_sweep_fails_runs_lost_with_their_worker(db, redis):
    await register_cron_jobs([CronSpec("tidy", "* * * * *", "", _ok, timeout_s=60)])
    lost = await CronRun.create(job_id="tidy", scheduled_at=_tick(5), status="running",
                                started_at=datetime.now(UTC) - timedelta(minutes=5))
    fresh = await CronRun.create(job_id="tidy", scheduled_at=_tick(), status="running",
                                 started_at=datetime.now(UTC))
    assert (await detect_missed_ticks(redis))["lost"] == 1
    assert (await CronRun.get(id=lost.id)).status == CronRunStatus.FAILED
    assert (await CronRun.get(id=lost.id)).error.startswith("lost:")
    assert (await CronRun.get(id=fresh.id)).status == CronRunStatus.RUNNING


# --- operator actions -----------------------------------------------------------------------


async def test_retry_makes_a_new_run_that_runs_and_keeps_the_failed_one(db, redis, run_worker):
    await register_cron_jobs([OK])
    failed = await CronRun.create(job_id="tidy", scheduled_at=_tick(1), status="failed",
                                  error="RuntimeError: disk full")
    row = await ops.retry_run(failed.id, "alice", redis=redis)
    assert row["status"] == "pending" and row["retry_of"] == failed.id
    await run_worker(functions=_worker_functions())
    retry = await CronRun.get(id=row["id"])
    assert retry.status == CronRunStatus.SUCCEEDED and retry.trigger == "retry"
    assert retry.actor == "alice" and CALLS == ["ok"]
    assert (await CronRun.get(id=failed.id)).status == CronRunStatus.FAILED
    [log] = await AuditLog.filter(action="cron.retry")
    assert log.actor == "alice" and log.target_id == str(failed.id)
    assert log.details["new_run_id"] == retry.id
    rows = await queries.list_cron_runs()
    assert next(r for r in rows if r["id"] == failed.id)["retried_by"] == retry.id


async def test_a_run_is_retried_once_and_only_when_failed_or_missed(db, redis):
    await register_cron_jobs([OK])
    missed = await CronRun.create(job_id="tidy", scheduled_at=_tick(1), status="missed")
    done = await CronRun.create(job_id="tidy", scheduled_at=_tick(2), status="succeeded")
    results = await asyncio.gather(*(ops.retry_run(missed.id, "alice", redis=redis)
                                     for _ in range(3)), return_exceptions=True)
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all("already retried" in r.message for r in results if isinstance(r, ConflictError))
    with pytest.raises(ConflictError, match="is succeeded: only a failed or missed run"):
        await ops.retry_run(done.id, "alice", redis=redis)
    with pytest.raises(NotFoundError):
        await ops.retry_run(999_999, "alice", redis=redis)
    assert await AuditLog.filter(action="cron.retry").count() == 1


async def test_run_now_runs_even_a_paused_job(db, redis, run_worker):
    await register_cron_jobs([OK])
    await ops.pause("tidy", "alice", redis=redis)
    row = await ops.run_now("tidy", "bob", redis=redis)
    assert row["status"] == "pending" and row["trigger"] == "manual"
    await run_worker(functions=_worker_functions())
    assert (await CronRun.get(id=row["id"])).status == CronRunStatus.SUCCEEDED
    assert CALLS == ["ok"]
    with pytest.raises(NotFoundError, match="cron job 'nope' does not exist"):
        await ops.run_now("nope", "bob", redis=redis)


async def test_pause_and_resume_are_audited_and_refused_twice(db, redis):
    await register_cron_jobs([OK])
    await CronRun.create(job_id="tidy", scheduled_at=_tick(), status="pending")
    row = await ops.pause("tidy", "alice", redis=redis)
    assert row["paused"] and row["paused_by"] == "alice" and row["next_runs"] == []
    assert await CronRun.filter(status="pending").count() == 0  # skipped, not missed
    with pytest.raises(ConflictError, match="already paused"):
        await ops.pause("tidy", "alice", redis=redis)
    before = datetime.now(UTC)
    row = await ops.resume("tidy", "bob", redis=redis)
    assert not row["paused"] and row["next_runs"]
    assert (await CronJob.get(name="tidy")).checked_until >= before
    with pytest.raises(ConflictError, match="already not paused"):
        await ops.resume("tidy", "bob", redis=redis)
    assert [a for a in await AuditLog.all().order_by("id").values_list("actor", "action")] == [
        ("alice", "cron.pause"), ("bob", "cron.resume")]


# --- registration, schedule, listing --------------------------------------------------------


async def test_registration_refreshes_the_schedule_and_keeps_paused(db, redis):
    await register_cron_jobs([CronSpec("tidy", "*/5 * * * *", "old", _ok)])
    await ops.pause("tidy", "alice", redis=redis)
    await register_cron_jobs([CronSpec("tidy", "*/10 * * * *", "new", _ok, grace_s=7)])
    job = await CronJob.get(name="tidy")
    assert (job.expression, job.description, job.grace_s, job.paused) == (
        "*/10 * * * *", "new", 7, True)


async def test_default_grace_is_half_the_period_within_bounds(db):
    assert CronSpec("a", "* * * * * */10", "", _ok).grace == 5
    assert CronSpec("b", "* * * * * *", "", _ok).grace == 2
    assert CronSpec("c", "0 * * * *", "", _ok).grace == 30


async def test_jobs_list_next_runs_within_24_hours_capped(db, redis):
    await register_cron_jobs([CronSpec("tidy", "0 * * * *", "", _ok),
                              CronSpec("fast", "* * * * *", "", _ok)])
    jobs = {j["name"]: j for j in await queries.list_cron_jobs()}
    assert len(jobs["tidy"]["next_runs"]) == 24
    assert len(jobs["fast"]["next_runs"]) == queries.NEXT_RUNS_CAP


async def test_schedule_lists_upcoming_and_recent_runs(db, redis):
    await register_cron_jobs([OK, BROKEN])
    with pytest.raises(RuntimeError):
        await recorded(BROKEN)(_ctx(redis, BROKEN, _now()))
    await CronRun.create(job_id="tidy", scheduled_at=_tick(3), status="missed", error="why")
    rows = await queries.list_cron_runs()
    upcoming = {r["job"]: r for r in rows if r["id"] is None}
    assert set(upcoming) == {"tidy", "flaky"} and upcoming["flaky"]["last_status"] == "failed"
    assert upcoming["tidy"]["status"] == "pending" and upcoming["tidy"]["last_status"] == "missed"
    recent = [r for r in rows if r["id"] is not None]
    assert [r["status"] for r in recent] == ["failed", "missed"]
    assert recent[0]["error"] == "RuntimeError: disk full"


async def test_a_job_no_longer_declared_is_removed_with_its_runs(db, redis):
    await register_cron_jobs([OK, BROKEN])
    await CronRun.create(job_id=BROKEN.name, scheduled_at=_tick(2), status="missed", error="x")
    await CronJob.filter(name=BROKEN.name).update(checked_until=_now() - timedelta(minutes=10))

    assert await retire_undeclared_cron_jobs([OK]) == [BROKEN.name]

    assert [j.name for j in await CronJob.all()] == [OK.name]
    assert not await CronRun.filter(job_id=BROKEN.name).exists()
    await detect_missed_ticks(redis)  # nothing is judged for the removed job any more
    assert not await CronRun.filter(job_id=BROKEN.name).exists()
    assert await retire_undeclared_cron_jobs([OK]) == []


def test_expressions_map_to_arq_fields():
    specs = [CronSpec("a", "*/15 3 * * 1-5", "", _ok), CronSpec("b", "0 0 * * 0", "", _ok),
             CronSpec("c", "* * * * * */10", "", _ok)]
    a, b, c = arq_cron_jobs(specs)
    assert a.minute == {0, 15, 30, 45} and a.hour == {3} and a.weekday == {0, 1, 2, 3, 4}
    assert b.weekday == {6} and a.second == {0}  # cron Sunday=0 is arq's 6
    assert c.second == {0, 10, 20, 30, 40, 50} and c.minute is None and c.unique
    with pytest.raises(ValueError, match="restricts both day-of-month and weekday"):
        arq_cron_jobs([CronSpec("d", "0 0 1 * 1", "", _ok)])


def test_built_in_jobs_are_declared():
    assert {s.name for s in cron_module.CRON_SPECS} == {
        "reconcile_deliveries", "zombie_sweep", "scaling_evaluation", "cron_watch", "retention"}
    zombie = next(j for j in arq_cron_jobs() if j.name == "cron:zombie_sweep")
    assert zombie.second == {0, 10, 20, 30, 40, 50}


async def test_drift_is_the_start_minus_the_tick(db, redis):
    await register_cron_jobs([OK])
    tick = _tick()
    run_id = await start_tick(OK, tick, {"redis": redis}, now=tick + timedelta(seconds=1.5))
    assert (await CronRun.get(id=run_id)).drift_ms == 1500


def test_the_tick_comes_from_the_arq_job_id_not_the_enqueue_time():
    tick = _tick()
    late_score = round((tick + timedelta(seconds=7)).timestamp() * 1000)
    assert tick_of({"job_id": cron_job_id("tidy", tick), "score": late_score}, "tidy") == tick
    assert tick_of({"score": late_score}, "tidy") == tick + timedelta(seconds=7)


# --- retention ------------------------------------------------------------------------------


async def test_retention_purges_only_old_archived_and_resolved_entries(db, redis, monkeypatch):
    monkeypatch.setenv("DLQ_RETENTION_DAYS", "10")
    monkeypatch.setattr(cron_module, "PURGE_BATCH", 2)  # several batches
    endpoint = await make_endpoint("http://127.0.0.1:9/hook")
    old = datetime.now(UTC) - timedelta(days=11)
    entries = {status: [await make_dead_letter(endpoint, status=status) for _ in range(3)]
               for status in DeadLetterStatus}
    for status in DeadLetterStatus:  # two of each are old, one recent
        ids = [e.id for e in entries[status][:2]]
        await DeadLetter.filter(id__in=ids).update(updated_at=old)
    result = await purge_expired({"redis": redis})
    assert result["dlq_purged"] == 4
    left = dict(await DeadLetter.all().values_list("id", "status"))
    assert len(left) == 8
    assert all(entries[s][0].id in left for s in (DeadLetterStatus.ACTIVE,
                                                  DeadLetterStatus.RETRYING))
    [log] = await AuditLog.filter(action="dlq.purge")
    assert log.details["purged"] == 4 and log.details["retention_days"] == 10


async def test_retention_refuses_a_bad_setting(db, redis, monkeypatch):
    monkeypatch.setenv("DLQ_RETENTION_DAYS", "-3")
    with pytest.raises(ValueError, match="DLQ_RETENTION_DAYS: must be a number of days > 0"):
        await purge_expired({"redis": redis})


# --- the reconciler -------------------------------------------------------------------------


async def test_reconciler_requeues_due_deliveries_after_redis_lost_them(db, redis, receiver):
    endpoint = await make_endpoint(receiver.url("/ok"))
    result = await publish_message(endpoint.app_id, "x", {}, redis=redis)
    delivery_id = result["deliveries"][0]["id"]
    await redis.flushall()  # Redis restarted without persistence
    assert await redis.zcard(queue_name()) == 0
    await Delivery.filter(id=delivery_id).update(created_at=datetime.now(UTC) - timedelta(minutes=5))

    assert await reconcile_deliveries({"redis": redis}) == {"requeued": 1, "recovered": 0,
                                                           "operations": 0}
    assert await redis.zcard(queue_name()) == 1
    assert (await Delivery.get(id=delivery_id)).status == DeliveryStatus.QUEUED
    # a second sweep while the job exists enqueues nothing new
    await reconcile_deliveries({"redis": redis})
    assert await redis.zcard(queue_name()) == 1


async def test_reconciler_hands_lost_bulk_deliveries_back_to_the_bulk_lane(db, redis):
    endpoint = await make_endpoint("http://127.0.0.1:9/hook")
    op = await BulkOperation.create(kind=BulkKind.RESYNC, actor="ops", total=2)
    message = await Message.create(app_id=endpoint.app_id, event_type="x", payload={})
    ids = [(await Delivery.create(message=message, endpoint=endpoint, bulk_operation=op)).id
           for _ in range(2)]
    await Delivery.filter(id__in=ids).update(created_at=datetime.now(UTC) - timedelta(minutes=5))

    assert await reconcile_deliveries({"redis": redis}) == {"requeued": 2, "recovered": 0,
                                                           "operations": 0}

    assert await redis.zcard(queue_name()) == 0  # not the live lane: no pacing, no cancel check
    [job] = await redis.queued_jobs(queue_name=bulk_queue_name())
    assert (job.function, job.args) == ("deliver_batch", (ids, op.id))
