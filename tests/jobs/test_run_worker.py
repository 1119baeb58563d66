"""jobs.run_worker.LeanWorker starts jobs with one script per poll, under arq's rules: a job runs
once however many workers poll it, never while another worker holds it, never before its
time, and never beyond `max_jobs` at once (arq's own behaviour: tests/jobs/test_arq_compat.py
runs both workers)."""

from __future__ import annotations

import asyncio

from arq.constants import in_progress_key_prefix
from arq.worker import Worker

from jobs.run_worker import LeanWorker

QUEUE = "lean-worker"


async def _count(ctx, n):
    await ctx["redis"].hincrby("ran", str(n), 1)
    await asyncio.sleep(0.01)  # jobs overlap, so the workers really compete


async def _hold(ctx):
    await asyncio.sleep(30)


def _make(cls: type[Worker], redis, **kwargs) -> Worker:
    return cls(functions=[_count, _hold], queue_name=QUEUE, poll_delay=0, redis_pool=redis,
               ctx={"redis": redis},
               handle_signals=False, **kwargs)


async def test_competing_workers_run_each_job_exactly_once(redis):
    for n in range(300):
        await redis.enqueue_job("_count", n, _queue_name=QUEUE)
    workers = [_make(LeanWorker, redis, burst=True, max_jobs=8),
               _make(LeanWorker, redis, burst=True, max_jobs=8),
               _make(Worker, redis, burst=True, max_jobs=8)]  # arq's own, same protocol
    await asyncio.gather(*(w.main() for w in workers))
    ran = await redis.hgetall("ran")
    assert {int(k): int(v) for k, v in ran.items()} == {n: 1 for n in range(300)}
    assert sum(w.jobs_complete for w in workers) == 300
    assert all(w.jobs_complete for w in workers[:2])  # both lean workers took a share
    assert await redis.zcard(QUEUE) == 0


async def test_only_jobs_that_are_due_and_not_held_start(redis):
    due = await redis.enqueue_job("_count", 1, _queue_name=QUEUE)
    later = await redis.enqueue_job("_count", 2, _queue_name=QUEUE, _defer_by=60)
    held = await redis.enqueue_job("_count", 3, _queue_name=QUEUE)
    await redis.psetex(in_progress_key_prefix + held.job_id, 60_000, b"1")  # another worker's
    worker = _make(LeanWorker, redis)
    await worker.start_jobs([j.job_id.encode() for j in (due, later, held)] + [b"finished"])
    assert set(worker.tasks) == {due.job_id}
    ttl_ms = await redis.pttl(in_progress_key_prefix + due.job_id)
    assert 0 < ttl_ms <= worker.in_progress_timeout_s * 1000
    await asyncio.gather(*worker.tasks.values())
    assert await redis.hgetall("ran") == {b"1": b"1"}
    assert not await redis.exists(in_progress_key_prefix + later.job_id)
    assert worker.job_counter == 0  # the slot was given back when the job ended


async def test_no_more_than_max_jobs_start_at_once(redis):
    jobs = [await redis.enqueue_job("_hold", _queue_name=QUEUE) for _ in range(5)]
    worker = _make(LeanWorker, redis, max_jobs=2)
    await worker.start_jobs([j.job_id.encode() for j in jobs])
    await worker.start_jobs([j.job_id.encode() for j in jobs])  # full: starts nothing more
    assert len(worker.tasks) == worker.job_counter == 2
    started = [j for j in jobs if await redis.exists(in_progress_key_prefix + j.job_id)]
    assert {j.job_id for j in started} == set(worker.tasks)
    for task in worker.tasks.values():
        task.cancel()
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
