"""arq worker settings: `python -m jobs.run_worker [--bulk]` (on uvloop) or
`arq jobs.worker.WorkerSettings`."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
from datetime import UTC
from typing import Any

from arq.connections import RedisSettings
from arq.worker import func

from jobs.cron import (arq_cron_jobs, register_cron_jobs, retire_undeclared_cron_jobs,
                       run_cron_job)
from jobs.attempt import ATTEMPT_DEADLINE_S
from jobs.deliver import (close_context, deliver, deliver_batch, deliver_entries, init_context,
                          stop_detached)
from jobs.heartbeats import (WorkerStats, job_ended, job_started, start_heartbeat,
                             stop_heartbeat, worker_id)
from jobs.http import make_client
from jobs.metrics import start_flushing, stop_flushing
from jobs.operations.bulk_walk import SEGMENT_S, resume_walkers, walk_bulk_operation
from jobs.queue import bulk_queue_name as _bulk_queue_name
from jobs.queue import queue_name as _queue_name
from jobs.queue import redis_settings
from models.config import get_settings
from models.db import close_db, init_db



def _configure_logging() -> None:
    """JSON lines of our own on stdout; arq keeps its own handler, httpx stays quiet."""
    logger = logging.getLogger("observatory")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)


_configure_logging()


#: the cyclic collector's thresholds in a worker (Python's defaults are 700, 10, 10)
GC_THRESHOLDS = (10_000, 20, 100)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path.

    Measured with gc.callbacks under bench/deliveries.py, Python's default thresholds spent
    ~12% of the worker's CPU collecting: every 700 allocations a young collection, and full
    collections walking the whole start-up heap (modules, models, pydantic schemas) over and
    over. bench.deliveries runs its raw loops under this too (the same runtime as the worker's). The heap built at start-up is frozen (moved out of the collector's sight, as
    Instagram and gunicorn's preload do), and young collections run every 10,000
    allocations: the garbage of a batch is almost all freed by reference counting anyway.
    """
    if os.environ.get("OBSERVATORY_GC_TUNING", "1") == "0":
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _start(ctx: dict[str, Any]) -> None:
    await init_db()
    ctx["http"] = make_client()
    init_context(ctx)
    ctx["metrics"] = WorkerStats()  # the delivery metrics plus the totals each beat reports
    start_flushing(ctx)
    ctx["agent_id"] = worker_id()  # stored on the deliveries it claims (jobs.deliver.claim)
    tune_gc()
    loop = type(asyncio.get_running_loop())
    logging.getLogger("observatory.worker").info(json.dumps(
        {"event": "worker.started", "agent": ctx["agent_id"],
         "loop": f"{loop.__module__}.{loop.__qualname__}"}))


async def startup(ctx: dict[str, Any]) -> None:
    await _start(ctx)
    await register_cron_jobs()
    await retire_undeclared_cron_jobs()
    await start_heartbeat(ctx, _queue_name())


async def bulk_startup(ctx: dict[str, Any]) -> None:
    """The bulk lane's worker: no cron (the delivery workers run it); walkers interrupted by
    a restart are resumed."""
    await _start(ctx)
    await start_heartbeat(ctx, _bulk_queue_name())
    await resume_walkers(ctx["redis"])


async def shutdown(ctx: dict[str, Any]) -> None:
    await stop_detached(ctx)
    await stop_flushing(ctx)  # after stop_detached: the stragglers' outcomes count too
    await close_context(ctx)
    await stop_heartbeat(ctx)  # last, with the final totals: `stopped` is never a zombie
    if client := ctx.get("http"):
        await client.aclose()
    await close_db()


def _redis_settings() -> RedisSettings:
    return redis_settings() if get_settings().redis_url else RedisSettings()


#: a batch's result is never read (its outcomes are in the database): storing it would cost
#: a Redis write per job on the hot path
_deliver_batch = func(deliver_batch, name="deliver_batch", keep_result=0)


class WorkerSettings:
    functions = [_deliver_batch, deliver,
                 func(run_cron_job, name="run_cron_job", max_tries=1, timeout=300)]
    cron_jobs = arq_cron_jobs()
    timezone = UTC  # cron expressions, missed-tick checks and the panel all speak UTC
    on_startup = startup
    on_shutdown = shutdown
    on_job_start = job_started  # the running-job count of the heartbeat
    on_job_end = job_ended
    queue_name = _queue_name()
    redis_settings = _redis_settings()
    max_jobs = 64
    job_timeout = int(ATTEMPT_DEADLINE_S) + 30  # each attempt has its own shorter deadline
    # Retries are our own jobs (`{delivery_id}:{attempt}`); arq's tries only re-run a job that a
    # shutdown cancelled (the delivery's claim was released, see jobs.deliver.release_claim).
    max_tries = 3
    keep_result = 60
    # On SIGTERM stop taking jobs and let running ones finish (batches detach stragglers within
    # seconds) instead of cancelling them: arq 0.28's close() raises when a cancelled job is
    # cancelled again, skipping on_shutdown and leaving SQLite's thread to hold the process.
    wait_for_job_completion_on_signal_second = 3
    poll_delay = 0.05
    health_check_key = f"{_queue_name()}:health-check"


class BulkWorkerSettings:
    """`arq jobs.worker.BulkWorkerSettings`: the bulk lane (the walkers of Retry All, re-sync,
    archive and delete by filter, and their deliveries) on its own queue, so a large replay
    never delays live traffic.

    A plain class like WorkerSettings (arq reads the class's own attributes, not inherited ones).
    """

    functions = [func(walk_bulk_operation, name="walk_bulk_operation",
                      timeout=SEGMENT_S + 60, max_tries=3), _deliver_batch,
                 func(deliver_entries, name="deliver_entries", keep_result=0), deliver]
    on_startup = bulk_startup
    on_shutdown = shutdown
    on_job_start = job_started
    on_job_end = job_ended
    queue_name = _bulk_queue_name()
    redis_settings = _redis_settings()
    max_jobs = 32
    job_timeout = WorkerSettings.job_timeout
    max_tries = WorkerSettings.max_tries
    keep_result = WorkerSettings.keep_result
    wait_for_job_completion_on_signal_second = 3
    poll_delay = WorkerSettings.poll_delay
    health_check_key = f"{_bulk_queue_name()}:health-check"
