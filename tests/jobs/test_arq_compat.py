"""arq 0.28 on redis-py 7: the features Observatory relies on (why the pin holds; pyproject)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta

from arq import Retry
from arq.jobs import Job, JobStatus
from arq.worker import Worker

from jobs.queue import redis_settings

QUEUE = "arq-compat"


async def _add(ctx, a, b):
    return a + b


async def _flaky(ctx):
    if ctx["job_try"] < 2:
        raise Retry(defer=0.05)
    return ctx["job_try"]


async def _sleepy(ctx):
    await asyncio.sleep(30)


def _worker(**kwargs) -> Worker:
    kwargs.setdefault("burst", True)
    return Worker(functions=[_add, _flaky, _sleepy], queue_name=QUEUE, poll_delay=0,
                  redis_settings=redis_settings(), handle_signals=False, **kwargs)


async def test_deferred_job_runs_after_its_delay(redis):
    job = await redis.enqueue_job("_add", 1, 2, _queue_name=QUEUE, _defer_by=0.3)
    worker = _worker()
    await worker.main()
    await worker.close()
    assert await job.result(timeout=1) == 3
    info = await job.result_info()  # arq's own clock: a slow enqueue call does not count
    assert info is not None and info.start_time - info.enqueue_time >= timedelta(seconds=0.3)


async def test_duplicate_job_id_is_refused(redis):
    assert await redis.enqueue_job("_add", 1, 1, _queue_name=QUEUE, _job_id="same")
    assert await redis.enqueue_job("_add", 1, 1, _queue_name=QUEUE, _job_id="same") is None


async def test_retry_reruns_the_job(redis):
    job = await redis.enqueue_job("_flaky", _queue_name=QUEUE)
    worker = _worker(max_tries=3)
    await worker.main()
    await worker.close()
    assert await job.result(timeout=1) == 2


async def test_abort_cancels_a_running_job(redis):
    job = await redis.enqueue_job("_sleepy", _queue_name=QUEUE)
    worker = _worker(allow_abort_jobs=True, burst=False)
    task = asyncio.create_task(worker.main())
    for _ in range(100):
        if await job.status() == JobStatus.in_progress:
            break
        await asyncio.sleep(0.05)
    assert await job.abort(timeout=5)
    task.cancel()
    await worker.close()


async def test_cron_job_is_scheduled_by_the_worker(redis):
    from jobs.worker import WorkerSettings

    names = {c.name for c in WorkerSettings.cron_jobs}
    assert names == {"cron:reconcile_deliveries", "cron:zombie_sweep", "cron:scaling_evaluation",
                     "cron:cron_watch", "cron:retention"}
    for cron_job in WorkerSettings.cron_jobs:
        cron_job.calculate_next(__import__("datetime").datetime.now())
        assert cron_job.next_run is not None


def test_arq_check_reports_no_worker(test_environment):
    done = subprocess.run([sys.executable, "-m", "arq", "jobs.worker.WorkerSettings", "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "Health check failed" in done.stdout + done.stderr


async def test_job_info_is_readable(redis):
    job = await redis.enqueue_job("_add", 2, 3, _queue_name=QUEUE, _job_id="info")
    info = await Job("info", redis, _queue_name=QUEUE).info()
    assert info and info.function == "_add" and info.args == (2, 3)
    assert job is not None
