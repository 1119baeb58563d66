"""Run an Observatory worker: `python -m jobs.run_worker [--bulk]`.

What `arq jobs.worker.WorkerSettings` does (arq's own logging set-up, then `run_worker`), with
a leaner start of jobs (`LeanWorker`) and on uvloop: measured with bench/deliveries.py, the stock asyncio loop (its selector, its Python
`Handle` and transport code) was about a fifth of a worker's CPU time, and uvloop cuts the
worker's CPU per delivery by ~12%. `OBSERVATORY_UVLOOP=0` keeps the stock loop.
`observatory up` and the benchmarks start workers this way; the `arq` command still works.
"""

from __future__ import annotations

import argparse
import asyncio
import logging.config
import os
from typing import Any

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker, get_kwargs

#: arq's start of a job (`Worker.start_jobs`: WATCH the in-progress key, EXISTS it, ZSCORE the
#: job, MULTI/PSETEX/EXEC: four round trips per job) for all the polled jobs in one script,
#: atomic like the WATCH it replaces. KEYS[1] the queue; ARGV: now (ms), the in-progress
#: key's lifetime (ms), its prefix, then the job ids. Returns the started ids and their scores.
_START_JOBS = """
local started = {}
for i = 4, #ARGV do
    local key = ARGV[3] .. ARGV[i]
    if redis.call('EXISTS', key) == 0 then
        local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
        if score and tonumber(score) <= tonumber(ARGV[1]) then
            redis.call('PSETEX', key, ARGV[2], '1')
            started[#started + 1] = ARGV[i]
            started[#started + 1] = score
        end
    end
end
return started
"""


class LeanWorker(Worker):
    """arq's Worker, starting the jobs of a poll with one Redis script instead of four round
    trips per job (py-spy: arq's `start_jobs` was ~5% of a delivery worker's CPU, its Redis
    writes and reads included). Which jobs start, and the in-progress key that keeps two
    workers from running one job, are arq's own rules (tests/jobs/test_run_worker.py)."""

    _start_script: Any = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        free = self.max_jobs - self.job_counter
        if free <= 0 or not job_ids:
            return
        if self._start_script is None:
            self._start_script = self.pool.register_script(_START_JOBS)
        started = await self._start_script(keys=[self.queue_name], args=[
            timestamp_ms(), int(self.in_progress_timeout_s * 1000), in_progress_key_prefix,
            *job_ids[:free]])
        for job_id_b, score in zip(started[::2], started[1::2], strict=True):
            await self.sem.acquire()  # free slots were counted above: never waits
            self.job_counter += 1
            job_id = job_id_b.decode()
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task


def use_uvloop() -> bool:
    """Make new event loops uvloop's (unless `OBSERVATORY_UVLOOP=0`); True when they are."""
    if os.environ.get("OBSERVATORY_UVLOOP", "1") == "0":
        return False
    try:
        import uvloop
    except ImportError:  # an optional speed-up: the stock loop is correct too
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jobs.run_worker", description=__doc__)
    parser.add_argument("--bulk", action="store_true",
                        help="the bulk lane (jobs.worker.BulkWorkerSettings)")
    parser.add_argument("-v", "--verbose", action="store_true", help="arq's debug logging")
    args = parser.parse_args(argv)

    from arq.logs import default_log_config

    from jobs.worker import BulkWorkerSettings, WorkerSettings

    logging.config.dictConfig(default_log_config(args.verbose))
    use_uvloop()  # before arq's Worker makes its loop (asyncio.get_event_loop())
    settings = BulkWorkerSettings if args.bulk else WorkerSettings
    LeanWorker(**get_kwargs(settings)).run()  # what arq's run_worker does, with LeanWorker


if __name__ == "__main__":
    main()
