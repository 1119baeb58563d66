"""The worker's cron jobs, and the record of every run (CronJob/CronRun rows).

Each job is declared once with a cron expression; `arq_cron_jobs()` turns the declarations
into arq `cron(...)` entries, and `recorded()` wraps each run in a CronRun row.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from arq.cron import CronJob as ArqCronJob
from arq.cron import cron
from croniter import croniter

from jobs.deliver import recover_stale_running
from jobs.events import publish_event
from jobs.queue import BATCH_SIZE, enqueue_bulk_batch, enqueue_delivery
from models.cron import CronJob, CronRun
from models.deliveries import Delivery
from models.enums import CronRunStatus, DeliveryStatus

CronFn = Callable[[dict[str, Any]], Awaitable[Any]]
STALE_QUEUED_S = 60.0


@dataclass(frozen=True)
class CronSpec:
    name: str
    expression: str
    description: str
    fn: CronFn


async def reconcile_deliveries(ctx: dict[str, Any]) -> dict[str, int]:
    """Re-enqueue deliveries that are due but may have no job in Redis, and recover those
    stuck `running` because their worker died.

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
    return {"requeued": len(queued) + len(retrying), "recovered": recovered}


async def record_fleet(ctx: dict[str, Any]) -> dict[str, int]:
    """Count the deliveries waiting in the queue (a first scaling signal)."""
    from jobs.queue import queue_name

    depth = await ctx["redis"].zcard(queue_name())
    return {"queue_depth": int(depth)}


CRON_SPECS = [
    CronSpec("reconcile_deliveries", "* * * * *",
             "Re-enqueue due deliveries that lost their job (Redis restart, killed worker)",
             reconcile_deliveries),
    CronSpec("record_fleet", "*/2 * * * *", "Measure queue depth for the scaling signals",
             record_fleet),
]


def next_run(expression: str, after: datetime | None = None) -> datetime:
    return croniter(expression, after or datetime.now(UTC)).get_next(datetime)


def recorded(spec: CronSpec) -> CronFn:
    """Wrap a cron function so each run leaves a CronRun row (running → succeeded/failed)."""

    async def run(ctx: dict[str, Any]) -> Any:
        started = datetime.now(UTC)
        job, _ = await CronJob.get_or_create(name=spec.name, defaults={
            "expression": spec.expression, "description": spec.description})
        row = await CronRun.create(job=job, status=CronRunStatus.RUNNING,
                                   scheduled_at=started.replace(second=0, microsecond=0),
                                   started_at=started)
        await publish_event(ctx["redis"], "cron.changed", name=spec.name)
        t0 = time.perf_counter()
        status, error, result = CronRunStatus.SUCCEEDED, None, None
        try:
            result = await spec.fn(ctx)
        except Exception as exc:  # noqa: BLE001 - recorded on the run, then re-raised
            status, error = CronRunStatus.FAILED, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            await CronRun.filter(id=row.id).update(
                status=status, error=error, finished_at=datetime.now(UTC),
                duration_ms=(time.perf_counter() - t0) * 1000)
            await CronJob.filter(name=spec.name).update(
                last_run_at=started, next_run_at=next_run(spec.expression))
            await publish_event(ctx["redis"], "cron.changed", name=spec.name)
        return result

    run.__qualname__ = run.__name__ = f"cron_{spec.name}"
    return run


def _arq_field(values: list[Any], convert: Callable[[int], int] = int) -> set[int] | None:
    return None if values == ["*"] else {convert(v) for v in values}


def arq_cron_jobs(specs: list[CronSpec] = CRON_SPECS) -> list[ArqCronJob]:
    """arq cron entries from the declared expressions (cron weekday 0=Sun → arq 0=Mon)."""
    jobs = []
    for spec in specs:
        minutes, hours, days, months, weekdays = croniter.expand(spec.expression)[0][:5]
        jobs.append(cron(
            recorded(spec), name=f"cron:{spec.name}", minute=_arq_field(minutes),
            hour=_arq_field(hours), day=_arq_field(days), month=_arq_field(months),
            weekday=_arq_field(weekdays, lambda d: (int(d) - 1) % 7), second=0,
            run_at_startup=False, unique=True,
        ))
    return jobs


async def register_cron_jobs(specs: list[CronSpec] = CRON_SPECS) -> None:
    """Create/refresh the CronJob rows so the dashboard shows upcoming runs before the first."""
    for spec in specs:
        await CronJob.update_or_create(name=spec.name, defaults={
            "expression": spec.expression, "description": spec.description,
            "next_run_at": next_run(spec.expression)})
