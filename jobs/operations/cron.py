"""Operator actions on cron jobs: run now, retry a failed or missed run, pause, resume.

The one place each action lives (dashboard, REST and CLI call these). Every action is audited
and published as `cron.changed`. A manual run or a retry is a NEW CronRun row (`pending`,
trigger `manual`/`retry`) run by the `run_cron_job` arq job on the main queue; a retried run
keeps its status and gets `retried_by` (a run is retried once: the unique `retry_of` key makes
two racing clicks one retry; a retry that fails is retried in turn).
"""

from __future__ import annotations

from datetime import UTC, datetime

from arq.connections import ArqRedis
from tortoise.exceptions import IntegrityError

from jobs import audit
from jobs.errors import ConflictError, NotFoundError
from jobs.events import publish_event
from jobs.queue import queue_name
from models import queries
from models.cron import TRIGGER_MANUAL, TRIGGER_RETRY, CronJob, CronRun
from models.enums import CronRunStatus
from models.queries import CronJobRow, CronRunRow

RETRYABLE = (CronRunStatus.FAILED, CronRunStatus.MISSED)


async def _job(name: str) -> CronJob:
    job = await CronJob.get_or_none(name=name)
    if job is None:
        raise NotFoundError(f"cron job {name!r} does not exist (see GET /v1/cron for the names)")
    return job


async def _enqueue(redis: ArqRedis, run: CronRun) -> None:
    await redis.enqueue_job("run_cron_job", run.job_id, run.id,  # type: ignore[attr-defined]
                            _job_id=f"cron-run:{run.id}", _queue_name=queue_name())
    await publish_event(redis, "cron.changed", name=run.job_id)  # type: ignore[attr-defined]


async def _row(run_id: int) -> CronRunRow:
    row = await queries.get_cron_run(run_id)
    assert row is not None  # just written
    return row


async def run_now(name: str, actor: str, *, redis: ArqRedis) -> CronRunRow:
    """Run a cron job now (paused or not): a new `pending` run, handed to the workers.

    Raises:
        NotFoundError: no such cron job.
    """
    job = await _job(name)
    run = await CronRun.create(job=job, trigger=TRIGGER_MANUAL, scheduled_at=datetime.now(UTC),
                               actor=actor)
    await audit.record(actor, "cron.run", "cron_job", name, run_id=run.id)
    await _enqueue(redis, run)
    return await _row(run.id)


async def retry_run(run_id: int, actor: str, *, redis: ArqRedis) -> CronRunRow:
    """Retry a failed or missed run: a new run (`retry_of` set) runs now; the old one stays.

    Raises:
        NotFoundError: no such run.
        ConflictError: the run is not failed or missed, or it was already retried.
    """
    run = await CronRun.get_or_none(id=run_id)
    if run is None:
        raise NotFoundError(f"cron run {run_id} does not exist")
    if run.status not in RETRYABLE:
        raise ConflictError(
            f"cron run {run_id} is {run.status.value}: only a failed or missed run can be "
            "retried", {"current": run.status.value})
    try:
        retry = await CronRun.create(job_id=run.job_id, trigger=TRIGGER_RETRY,  # type: ignore[attr-defined]
                                     scheduled_at=datetime.now(UTC), retry_of=run, actor=actor)
    except IntegrityError as exc:
        first = await CronRun.filter(retry_of_id=run_id).values_list("id", flat=True)
        raise ConflictError(
            f"cron run {run_id} was already retried as run {first[0] if first else '?'}; "
            "retry that run if it failed too", {"retried_by": first[0] if first else None}
        ) from exc
    await audit.record(actor, "cron.retry", "cron_run", run_id, job=run.job_id,  # type: ignore[attr-defined]
                       new_run_id=retry.id, status=run.status.value)
    await _enqueue(redis, retry)
    return await _row(retry.id)


async def set_paused(name: str, paused: bool, actor: str, *, redis: ArqRedis) -> CronJobRow:
    """Pause (skip every tick until resumed) or resume a cron job.

    Pausing drops the job's `pending` tick placeholders (those ticks are skipped, not missed);
    resuming restarts the missed-tick checkpoint, so ticks while paused are never `missed`.
    A manual run or a retry still runs while paused (an operator asked for it).

    Raises:
        NotFoundError: no such cron job.
        ConflictError: it is already paused (pause) or not paused (resume).
    """
    now = datetime.now(UTC)
    changes = ({"paused": True, "paused_at": now, "paused_by": actor} if paused else
               {"paused": False, "paused_at": None, "paused_by": None, "checked_until": now})
    if not await CronJob.filter(name=name, paused=not paused).update(**changes):
        await _job(name)
        state = "paused" if paused else "not paused"
        raise ConflictError(f"cron job {name!r} is already {state}",
                            {"current": "paused" if paused else "active"})
    if paused:
        await CronRun.filter(job_id=name, status=CronRunStatus.PENDING,
                             trigger="schedule").delete()
    await audit.record(actor, "cron.pause" if paused else "cron.resume", "cron_job", name)
    await publish_event(redis, "cron.changed", name=name)
    [row] = await queries.list_cron_jobs(name)
    return row


async def pause(name: str, actor: str, *, redis: ArqRedis) -> CronJobRow:
    return await set_paused(name, True, actor, redis=redis)


async def resume(name: str, actor: str, *, redis: ArqRedis) -> CronJobRow:
    return await set_paused(name, False, actor, redis=redis)
