"""The worker's cron jobs: declared once (`CRON_SPECS`), scheduled by arq, every tick recorded.

One tick: every worker's arq scheduler enqueues `cron:{name}` under the same job id
(`unique=True`), so one worker takes it; `recorded()` then claims the tick's CronRun row with a
compare-and-set on the unique (job, scheduled_at) key, so even a duplicate job runs nothing
twice. A paused job skips its ticks (no row: paused is not missed). A tick that starts later
than its grace window, or while the previous run is still running, is recorded `missed` and
not run (like Kubernetes' `startingDeadlineSeconds`); ticks nobody started at all are found by
the `cron_watch` sweep (jobs.cron_watch). Manual runs and retries are rows of their own, run by
the `run_cron_job` job on the main queue (jobs.operations.cron).

Expressions are croniter syntax in UTC with an optional 6th field for seconds
(`* * * * * */10`: every 10 s), mapped onto arq's cron fields by `arq_cron_jobs`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from arq.cron import CronJob as ArqCronJob
from arq.cron import cron
from croniter import croniter
from tortoise.exceptions import IntegrityError

from jobs import audit
from jobs.cron_watch import record_missed, watch_cron
from jobs.deliver import recover_stale_running
from jobs.events import publish_event
from jobs.metrics import note_cron_drift
from jobs.operations.bulk_walk import recover_lost
from jobs.queue import BATCH_SIZE, enqueue_bulk_batch, enqueue_delivery
from models.cron import TRIGGER_SCHEDULE, CronJob, CronRun
from models.dead_letters import DeadLetter
from models.deliveries import Delivery
from models.dlq_filter import prune_search_index
from models.enums import CronRunStatus, DeadLetterStatus, DeliveryStatus

CronFn = Callable[[dict[str, Any]], Awaitable[Any]]
STALE_QUEUED_S = 60.0
DEFAULT_TIMEOUT_S = 300.0
PURGE_BATCH = 500
CRON_RUN_RETENTION_DAYS = 7

log = logging.getLogger("observatory.cron")


@dataclass(frozen=True)
class CronSpec:
    name: str
    expression: str  # croniter syntax, UTC; an optional 6th field is seconds
    description: str
    fn: CronFn
    grace_s: float | None = None  # None: half the period, between 2 and 30 s
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def grace(self) -> float:
        return self.grace_s if self.grace_s is not None else default_grace(self.expression)


def default_grace(expression: str) -> float:
    """Half the schedule's period, at least 2 s (arq's scheduling slack), at most 30 s."""
    it = croniter(expression, datetime.now(UTC))
    first = it.get_next(datetime)
    period = (it.get_next(datetime) - first).total_seconds()
    return min(30.0, max(2.0, period / 2))


# --- built-in jobs --------------------------------------------------------------------------


async def reconcile_deliveries(ctx: dict[str, Any]) -> dict[str, int]:
    """Re-enqueue deliveries that are due but may have no job in Redis, recover those stuck
    `running` because their worker died, and Retry Alls whose live state Redis lost
    (jobs.operations.bulk_walk.recover_lost).

    Enqueueing is idempotent (job id `{delivery_id}:{attempt}`), so a delivery whose job still
    exists is left alone by arq.
    """
    now = datetime.now(UTC)
    stale = now - timedelta(seconds=STALE_QUEUED_S)
    queued = await Delivery.filter(status=DeliveryStatus.QUEUED, created_at__lt=stale).values_list(
        "id", "attempts", "bulk_operation_id")
    retrying = await Delivery.filter(status=DeliveryStatus.RETRYING,
                                     next_attempt_at__lt=stale).values_list(
        "id", "attempts", "bulk_operation_id")
    bulk: dict[int, list[int]] = defaultdict(list)
    for delivery_id, attempts, operation_id in [*queued, *retrying]:
        if operation_id:  # back to the bulk lane: paced, and its cancel flag still honoured
            bulk[operation_id].append(delivery_id)
        else:
            await enqueue_delivery(ctx["redis"], delivery_id, attempts + 1)
    for operation_id, ids in bulk.items():
        for start in range(0, len(ids), BATCH_SIZE):
            await enqueue_bulk_batch(ctx["redis"], ids[start:start + BATCH_SIZE], operation_id)
    recovered = await recover_stale_running(ctx)
    operations = await recover_lost(ctx["redis"])  # Retry Alls whose jobs Redis lost
    return {"requeued": len(queued) + len(retrying), "recovered": recovered,
            "operations": operations}


def retention_days(name: str = "DLQ_RETENTION_DAYS", default: float = 30.0) -> float:
    """A retention period in days from the environment (> 0); ValueError naming it otherwise."""
    raw = os.environ.get(name, "").strip()
    try:
        days = float(raw) if raw else default
    except ValueError:
        days = -1.0
    if not days > 0:
        raise ValueError(f"{name}: must be a number of days > 0, got {raw!r}")
    return days


async def purge_expired(ctx: dict[str, Any], now: datetime | None = None) -> dict[str, Any]:
    """Retention: delete archived/resolved DLQ entries unchanged for DLQ_RETENTION_DAYS (30),
    in batches, with one audit row per run; cron runs older than 7 days; and, on SQLite, the
    search index rows of entries deleted since the last run (models.dlq_filter).

    The failed deliveries and their messages stay (they are the delivery log).
    """
    now = now or datetime.now(UTC)
    days = retention_days()
    cutoff = now - timedelta(days=days)
    expired = {"status__in": (DeadLetterStatus.ARCHIVED, DeadLetterStatus.RESOLVED),
               "updated_at__lt": cutoff}
    purged = 0
    while ids := await DeadLetter.filter(**expired).order_by("id").limit(PURGE_BATCH).values_list(
            "id", flat=True):
        purged += await DeadLetter.filter(id__in=list(ids), **expired).delete()
    await audit.record("system", "dlq.purge", "dead_letter", "retention", purged=purged,
                       retention_days=days, cutoff=cutoff.isoformat())
    if purged:
        await publish_event(ctx["redis"], "dlq.changed", id=None, status="purged")
    runs = await CronRun.filter(
        scheduled_at__lt=now - timedelta(days=CRON_RUN_RETENTION_DAYS)).delete()
    # SQLite's search index keeps the entries deleted today (purged, deleted, bulk-deleted)
    return {"dlq_purged": purged, "cron_runs_pruned": runs,
            "search_index_pruned": await prune_search_index()}


async def sweep_zombies(ctx: dict[str, Any]) -> Any:
    from jobs.fleet import sweep_zombies as sweep  # imported late: jobs.fleet is the fleet's

    return await sweep(ctx)


async def evaluate_scaling(ctx: dict[str, Any]) -> Any:
    from jobs.fleet import evaluate_scaling as evaluate

    return await evaluate(ctx)


CRON_SPECS = [
    CronSpec("reconcile_deliveries", "* * * * *",
             "Re-enqueue due deliveries that lost their job (Redis restart, killed worker)",
             reconcile_deliveries),
    CronSpec("zombie_sweep", "* * * * * */10",
             "Every 10 s: mark workers without a recent heartbeat as zombies and hand their "
             "deliveries back", sweep_zombies),
    CronSpec("scaling_evaluation", "* * * * *",
             "Compare queue depth, oldest waiting job and live workers with the thresholds",
             evaluate_scaling),
    CronSpec("cron_watch", "* * * * * */15",
             "Every 15 s: record cron ticks that did not start in their grace window (missed)",
             watch_cron),
    CronSpec("retention", "17 3 * * *",
             "Purge archived/resolved DLQ entries older than DLQ_RETENTION_DAYS (30) and cron "
             "runs older than 7 days", purge_expired),
]

# Every spec this process knows by name (the built-ins, and any passed to arq_cron_jobs or
# register_cron_jobs): what `run_cron_job` runs for a manual run or a retry.
_KNOWN: dict[str, CronSpec] = {spec.name: spec for spec in CRON_SPECS}


def _know(specs: Iterable[CronSpec]) -> None:
    _KNOWN.update({spec.name: spec for spec in specs})


def next_run(expression: str, after: datetime | None = None) -> datetime:
    return croniter(expression, after or datetime.now(UTC)).get_next(datetime)


# --- recording runs -------------------------------------------------------------------------


def tick_of(ctx: dict[str, Any], name: str) -> datetime:
    """The tick a scheduled job is for: from its arq job id `cron:{name}:{ms}` (the score is
    the enqueue time when arq enqueued it late), else now, to the second."""
    job_id = str(ctx.get("job_id") or "")
    prefix = f"cron:{name}:"
    ms = int(job_id[len(prefix):]) if job_id.startswith(prefix) and job_id[len(prefix):].isdigit() \
        else int(ctx.get("score") or time.time() * 1000)
    return datetime.fromtimestamp(ms // 1000, UTC)


async def start_tick(spec: CronSpec, tick: datetime, ctx: dict[str, Any],
                     now: datetime | None = None) -> int | None:
    """Claim `tick` of `spec` for this worker: the run's id, or None when it must not run
    (paused, already claimed, or missed: too late or the previous run still running)."""
    now = now or datetime.now(UTC)
    job = await CronJob.get_or_none(name=spec.name) or await _register(spec, now)
    if job.paused:
        return None
    redis = ctx.get("redis")
    drift_s = (now - tick).total_seconds()
    if drift_s > job.grace_s:
        await record_missed(job, tick, f"started {drift_s:.1f} s after its tick, past its "
                            f"{job.grace_s:g} s grace window (workers busy)", redis)
        return None
    if busy := await CronRun.filter(
            job_id=spec.name, status=CronRunStatus.RUNNING,
            started_at__gt=now - timedelta(seconds=job.timeout_s)).exclude(
            scheduled_at=tick).first():
        await record_missed(job, tick, f"previous run #{busy.id} was still running", redis)
        return None
    claim = {"status": CronRunStatus.RUNNING, "started_at": now, "drift_ms": drift_s * 1000,
             "arq_job_id": ctx.get("job_id")}
    if await CronRun.filter(job_id=spec.name, scheduled_at=tick,
                            status=CronRunStatus.PENDING).update(**claim):
        run_id = (await CronRun.get(job_id=spec.name, scheduled_at=tick)).id
    else:
        try:
            run_id = (await CronRun.create(job_id=spec.name, scheduled_at=tick,
                                           trigger=TRIGGER_SCHEDULE, **claim)).id
        except IntegrityError:
            return None  # another worker has this tick, or it was recorded missed
    await _started(spec.name, drift_s, redis)
    return run_id


async def _started(name: str, drift_s: float, redis: Any) -> None:
    if redis is not None:
        await note_cron_drift(redis, name, drift_s)
        await publish_event(redis, "cron.changed", name=name)


async def execute_run(spec: CronSpec, run_id: int, ctx: dict[str, Any]) -> Any:
    """Run `spec`'s function for the claimed run `run_id`, recording its outcome."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    status, error, result = CronRunStatus.SUCCEEDED, None, None
    try:
        result = await spec.fn(ctx)
    except asyncio.CancelledError:
        status, error = CronRunStatus.FAILED, "cancelled: the job timed out or its worker stopped"
        raise
    except Exception as exc:  # noqa: BLE001 - recorded on the run, then re-raised
        status, error = CronRunStatus.FAILED, f"{type(exc).__name__}: {exc}"
        raise
    finally:
        await CronRun.filter(id=run_id).update(
            status=status, error=error, finished_at=datetime.now(UTC),
            duration_ms=(time.perf_counter() - t0) * 1000)
        await CronJob.filter(name=spec.name).update(
            last_run_at=started, next_run_at=next_run(spec.expression))
        if ctx.get("redis") is not None:
            await publish_event(ctx["redis"], "cron.changed", name=spec.name)
    return result


def recorded(spec: CronSpec) -> CronFn:
    """Wrap a cron function so each tick leaves exactly one CronRun row."""

    async def run(ctx: dict[str, Any]) -> Any:
        run_id = await start_tick(spec, tick_of(ctx, spec.name), ctx)
        if run_id is None:
            return None
        return await execute_run(spec, run_id, ctx)

    run.__qualname__ = run.__name__ = f"cron_{spec.name}"
    return run


async def run_cron_job(ctx: dict[str, Any], name: str, run_id: int) -> Any:
    """The arq job of a manual run or a retry: claim its `pending` row, then run the job.

    A row that is no longer pending (a duplicate job) is left alone; a job this worker does not
    declare fails its row with the reason.
    """
    now = datetime.now(UTC)
    row = await CronRun.get_or_none(id=run_id)
    if row is None:
        return None
    spec = _KNOWN.get(name)
    if spec is None:
        await CronRun.filter(id=run_id, status=CronRunStatus.PENDING).update(
            status=CronRunStatus.FAILED, finished_at=now,
            error=f"cron job {name!r} is not declared by this worker")
        return None
    drift_s = (now - row.scheduled_at).total_seconds()
    if not await CronRun.filter(id=run_id, status=CronRunStatus.PENDING).update(
            status=CronRunStatus.RUNNING, started_at=now, drift_ms=drift_s * 1000,
            arq_job_id=ctx.get("job_id")):
        return None
    await _started(name, drift_s, ctx.get("redis"))
    return await execute_run(spec, run_id, ctx)


# --- scheduling and registration ------------------------------------------------------------


def _arq_field(values: list[Any], convert: Callable[[int], int] = int) -> set[int] | None:
    return None if values == ["*"] else {convert(v) for v in values}


def arq_cron_jobs(specs: list[CronSpec] = CRON_SPECS) -> list[ArqCronJob]:
    """arq cron entries from the declared expressions (cron weekday 0=Sun → arq 0=Mon).

    Raises:
        ValueError: an expression arq cannot follow (naming the job and the rule).
    """
    _know(specs)
    jobs = []
    for spec in specs:
        fields = croniter.expand(spec.expression)[0]
        minutes, hours, days, months, weekdays = fields[:5]
        seconds = fields[5] if len(fields) > 5 else [0]
        if days != ["*"] and weekdays != ["*"]:
            raise ValueError(f"{spec.name}: expression {spec.expression!r} restricts both "
                             "day-of-month and weekday; arq requires both to match, cron "
                             "either: use one of them")
        jobs.append(cron(
            recorded(spec), name=f"cron:{spec.name}", minute=_arq_field(minutes),
            hour=_arq_field(hours), day=_arq_field(days), month=_arq_field(months),
            weekday=_arq_field(weekdays, lambda d: (int(d) - 1) % 7), second=_arq_field(seconds),
            microsecond=0,  # ticks on the second: drift is measured from the tick itself
            run_at_startup=False, unique=True, timeout=spec.timeout_s,
            max_tries=1,  # a tick retaken after its worker died is not re-run (cron_watch)
        ))
    return jobs


async def _register(spec: CronSpec, now: datetime) -> CronJob:
    job, created = await CronJob.get_or_create(name=spec.name, defaults={
        "expression": spec.expression, "description": spec.description,
        "grace_s": spec.grace, "timeout_s": spec.timeout_s,
        "next_run_at": next_run(spec.expression, now), "checked_until": now})
    return job


async def register_cron_jobs(specs: list[CronSpec] = CRON_SPECS) -> None:
    """Create or refresh the CronJob rows on worker start (schedule, description, windows),
    keeping whether each is paused. A changed expression restarts the missed-tick checkpoint:
    ticks of the old schedule are not judged by the new one."""
    _know(specs)
    now = datetime.now(UTC)
    for spec in specs:
        job = await _register(spec, now)
        changes: dict[str, Any] = {
            "description": spec.description, "grace_s": spec.grace, "timeout_s": spec.timeout_s,
            "next_run_at": next_run(spec.expression, now)}
        if job.expression != spec.expression:
            changes.update(expression=spec.expression, checked_until=now)
        await CronJob.filter(name=spec.name).update(**changes)


async def retire_undeclared_cron_jobs(specs: list[CronSpec] = CRON_SPECS) -> list[str]:
    """On worker start, after `register_cron_jobs`: remove the CronJob rows (and their runs)
    of jobs the code no longer declares. Otherwise the missed-tick sweep would record a
    `missed` run for such a job on every tick, forever (a database from before a job was
    dropped). A worker of an older version still declaring it registers it again."""
    gone = await CronJob.exclude(name__in=[spec.name for spec in specs]).values_list(
        "name", flat=True)
    if gone:
        await CronJob.filter(name__in=gone).delete()
        log.warning("cron jobs no longer declared, removed with their runs: %s",
                    ", ".join(sorted(gone)))
    return sorted(gone)

