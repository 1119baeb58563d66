"""jobs.run_worker.ObservatoryWorker: arq's Worker, minus the Redis round trips a poll spent
re-checking the jobs this worker runs itself; which jobs start stays arq's rule (a job runs
once however many workers poll it)."""

from __future__ import annotations

import asyncio

from arq.worker import Worker

from jobs.run_worker import ObservatoryWorker

QUEUE = "observatory-worker"


async def _count(ctx, n):
    await ctx["redis"].hincrby("ran", str(n), 1)
    await asyncio.sleep(0.01)  # jobs overlap, so the workers really compete


async def _hold(ctx):
    await asyncio.sleep(30)


def _make(cls: type[Worker], redis, **kwargs) -> Worker:
    return cls(functions=[_count, _hold], queue_name=QUEUE, poll_delay=0, redis_pool=redis,
               ctx={"redis": redis}, handle_signals=False, **kwargs)


async def _watches(redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_watch", {}).get("calls", 0))


async def _polls_of_own_jobs(cls: type[Worker], redis) -> tuple[int, Worker]:
    """WATCH commands sent by 10 polls that find only the 3 jobs the worker runs."""
    jobs = [await redis.enqueue_job("_hold", _queue_name=QUEUE) for _ in range(3)]
    ids = [j.job_id.encode() for j in jobs]
    worker = _make(cls, redis, max_jobs=5)
    await worker.start_jobs(ids)
    assert len(worker.tasks) == worker.job_counter == 3
    before = await _watches(redis)
    for _ in range(10):
        await worker.start_jobs(ids)
    watched = await _watches(redis) - before
    assert len(worker.tasks) == worker.job_counter == 3  # none started twice
    for task in worker.tasks.values():
        task.cancel()
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
    return watched, worker


async def test_a_poll_does_not_check_again_the_jobs_the_worker_runs(redis):
    watched, _ = await _polls_of_own_jobs(ObservatoryWorker, redis)
    assert watched == 0
    await redis.flushdb()
    stock, _ = await _polls_of_own_jobs(Worker, redis)  # arq's own: a WATCH per job and poll
    assert stock >= 30


async def test_competing_workers_run_each_job_exactly_once(redis):
    for n in range(300):
        await redis.enqueue_job("_count", n, _queue_name=QUEUE)
    workers = [_make(ObservatoryWorker, redis, burst=True, max_jobs=8),
               _make(ObservatoryWorker, redis, burst=True, max_jobs=8),
               _make(Worker, redis, burst=True, max_jobs=8)]  # arq's own, same protocol
    await asyncio.gather(*(w.main() for w in workers))
    ran = await redis.hgetall("ran")
    assert {int(k): int(v) for k, v in ran.items()} == {n: 1 for n in range(300)}
    assert sum(w.jobs_complete for w in workers) == 300
    assert all(w.jobs_complete for w in workers[:2])  # both of ours took a share
    assert await redis.zcard(QUEUE) == 0


async def _calls(redis, *commands: str) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in commands}


async def test_a_job_starts_in_one_round_trip_under_arq_rule(redis):
    """Each start is one script call (no WATCH); a job that is not due, already held by
    another worker, or gone from the queue does not start."""
    due = [await redis.enqueue_job("_hold", _queue_name=QUEUE) for _ in range(4)]
    later = await redis.enqueue_job("_hold", _queue_name=QUEUE, _defer_by=60)
    held = await redis.enqueue_job("_hold", _queue_name=QUEUE)
    await redis.set(f"arq:in-progress:{held.job_id}", b"1")  # another worker runs it
    worker = _make(ObservatoryWorker, redis, max_jobs=10)
    before = await _calls(redis, "watch", "multi", "evalsha", "eval")
    await worker.start_jobs([j.job_id.encode() for j in [*due, later, held]] + [b"gone"])
    after = await _calls(redis, "watch", "multi", "evalsha", "eval")
    assert set(worker.tasks) == {j.job_id for j in due}
    assert worker.job_counter == 4
    assert after["watch"] == before["watch"]  # (MULTI still wraps each started job's own reads)
    # 7 starts tried, one round trip each (EVAL once if the script was not cached yet)
    assert (after["evalsha"] + after["eval"]) - (before["evalsha"] + before["eval"]) in (7, 8)
    for job in due:
        assert await redis.exists(f"arq:in-progress:{job.job_id}")
    assert not await redis.exists(f"arq:in-progress:{later.job_id}")
    for task in worker.tasks.values():
        task.cancel()
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
