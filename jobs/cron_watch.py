"""Missed cron ticks: recording them (with why) and the sweep that finds ticks nobody started.

A tick is `missed` when it did not start within its job's grace window. Two places notice:
the run itself, when it starts too late or while the previous run is still running
(jobs.cron `recorded`), and `detect_missed_ticks`, the `cron_watch` built-in job, which walks
every unpaused job's ticks since its checkpoint (`CronJob.checked_until`) and compares them with
the recorded runs:

    tick due, within grace, no row   -> a `pending` row (shown in the panel)
    tick past grace, no row/pending  -> `missed`, reason: previous run still running | waited in
                                        the queue (workers busy) | no worker alive | no worker
                                        scheduled it (starting, restarting)
    `running` past the job's timeout -> `failed` (its worker died mid-run)

Paused jobs are not swept (their checkpoint moves on): a paused tick is skipped, not missed.
Every row goes through the unique (job, scheduled_at) key, so a sweep racing a late run or a
second sweep records each tick once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import croniter
from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError

from jobs.events import publish_event
from jobs.metrics import count_cron_missed
from jobs.queue import queue_name
from models.agents import Agent
from models.cron import TRIGGER_SCHEDULE, CronJob, CronRun
from models.enums import CronRunStatus

log = logging.getLogger("observatory.cron")

MAX_LOOKBACK = timedelta(hours=1)  # ticks older than this when a sweep comes are not recorded
MAX_TICKS = 3600  # per job and sweep (a 1-second schedule after an hour down)
LOST_ERROR = "lost: still running {:.0f} s after it started (its worker stopped mid-run)"


@dataclass(frozen=True)
class _Fleet:
    """When workers were alive, read once per sweep: (started_at, last_seen) per worker."""

    spans: list[tuple[datetime, datetime]]

    def alive_at(self, moment: datetime) -> bool:
        return any(start <= moment <= seen for start, seen in self.spans)


def cron_job_id(name: str, tick: datetime) -> str:
    """The id arq gives the tick's job (`cron:{name}` enqueued with unique=True)."""
    return f"cron:{name}:{round(tick.timestamp() * 1000)}"


async def record_missed(job: CronJob, tick: datetime, reason: str,
                        redis: Redis | None) -> bool:
    """Record `tick` of `job` as missed (a new row, or its `pending` row) with `reason`.

    Returns whether this call recorded it (False when the tick has a row in another state:
    it ran, runs, or another worker recorded it missed first).
    """
    changed = await CronRun.filter(job_id=job.name, scheduled_at=tick,
                                   status=CronRunStatus.PENDING).update(
        status=CronRunStatus.MISSED, error=reason)
    if not changed:
        try:
            await CronRun.create(job_id=job.name, scheduled_at=tick, status=CronRunStatus.MISSED,
                                 error=reason, trigger=TRIGGER_SCHEDULE)
        except IntegrityError:
            return False
    log.info('{"event": "cron.missed", "job": "%s", "tick": "%s", "reason": "%s"}',
             job.name, tick.isoformat(), reason.replace('"', "'"))
    if redis is not None:
        await count_cron_missed(redis, job.name)
    return True


async def watch_cron(ctx: dict[str, Any]) -> dict[str, int]:
    """The `cron_watch` built-in job."""
    return await detect_missed_ticks(ctx["redis"])


async def detect_missed_ticks(redis: Redis | None, now: datetime | None = None
                              ) -> dict[str, int]:
    """Sweep every cron job once: pending and missed ticks, runs lost with their worker.

    Returns:
        Counts of what this sweep recorded: `pending`, `missed`, `lost`.
    """
    now = now or datetime.now(UTC)
    fleet = _Fleet([(_aware(s), _aware(l)) for s, l in
                    await Agent.filter(kind="worker").values_list("started_at", "last_seen")])
    totals = {"pending": 0, "missed": 0, "lost": 0}
    for job in await CronJob.all():
        totals["lost"] += await _fail_lost_runs(job, now)
        if job.paused:
            await CronJob.filter(name=job.name).update(checked_until=now)
            continue
        pending, missed = await _sweep_job(job, fleet, redis, now)
        totals["pending"] += pending
        totals["missed"] += missed
    if any(totals.values()) and redis is not None:
        await publish_event(redis, "cron.changed", name="*")
    return totals


async def _sweep_job(job: CronJob, fleet: _Fleet, redis: Redis | None,
                     now: datetime) -> tuple[int, int]:
    horizon = now - timedelta(seconds=job.grace_s)
    since = max(_aware(job.checked_until) if job.checked_until else now, now - MAX_LOOKBACK)
    ticks = ticks_between(job.expression, since, now)
    recorded = {_key(t): status for t, status in await CronRun.filter(
        job_id=job.name, trigger=TRIGGER_SCHEDULE, scheduled_at__gt=since, scheduled_at__lte=now,
    ).values_list("scheduled_at", "status")}
    pending = missed = 0
    for tick in ticks:
        status = recorded.get(_key(tick))
        if tick > horizon:
            if status is None and await _create_pending(job, tick):
                pending += 1
        elif status in (None, CronRunStatus.PENDING, CronRunStatus.PENDING.value):
            reason = await _missed_reason(job, tick, fleet, redis)
            missed += await record_missed(job, tick, reason, redis)
    # pending rows the walk above no longer reaches (e.g. made before a restart)
    for tick in await CronRun.filter(job_id=job.name, status=CronRunStatus.PENDING,
                                     trigger=TRIGGER_SCHEDULE, scheduled_at__lte=since,
                                     scheduled_at__lt=horizon).values_list("scheduled_at",
                                                                           flat=True):
        reason = await _missed_reason(job, _aware(tick), fleet, redis)
        missed += await record_missed(job, _aware(tick), reason, redis)
    await CronJob.filter(name=job.name).update(checked_until=max(since, horizon))
    return pending, missed


def ticks_between(expression: str, after: datetime, until: datetime,
                  limit: int = MAX_TICKS) -> list[datetime]:
    """The ticks of `expression` in (after, until], oldest first, at most the `limit` latest."""
    it = croniter(expression, after)
    ticks: list[datetime] = []
    while (tick := it.get_next(datetime)) <= until:
        ticks.append(tick)
        if len(ticks) > limit:
            ticks.pop(0)
    return ticks


async def _create_pending(job: CronJob, tick: datetime) -> bool:
    try:
        await CronRun.create(job_id=job.name, scheduled_at=tick, status=CronRunStatus.PENDING,
                             trigger=TRIGGER_SCHEDULE)
    except IntegrityError:
        return False  # the run started meanwhile
    return True


async def _missed_reason(job: CronJob, tick: datetime, fleet: _Fleet,
                         redis: Redis | None) -> str:
    """Why `tick` never started, from what is known now."""
    busy = await CronRun.filter(job_id=job.name, status=CronRunStatus.RUNNING,
                                started_at__lte=tick).order_by("-started_at").first()
    if busy is not None:
        return f"previous run #{busy.id} was still running"
    if redis is not None and await redis.zscore(queue_name(), cron_job_id(job.name, tick)):
        return (f"workers busy: the tick waited in the queue past its {job.grace_s:g} s "
                "grace window")
    if not fleet.alive_at(tick):
        return "no worker alive at the tick"
    return "no worker scheduled the tick (a worker was starting or restarting)"


async def _fail_lost_runs(job: CronJob, now: datetime) -> int:
    """Runs still `running` past the job's timeout: their worker died mid-run."""
    cutoff = now - timedelta(seconds=job.timeout_s)
    return await CronRun.filter(job_id=job.name, status=CronRunStatus.RUNNING,
                                started_at__lt=cutoff).update(
        status=CronRunStatus.FAILED, finished_at=now, error=LOST_ERROR.format(job.timeout_s))


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _key(moment: datetime) -> int:
    """A tick's identity across drivers (SQLite and PostgreSQL datetimes compare as seconds)."""
    return int(_aware(moment).timestamp())
