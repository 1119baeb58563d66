"""Run an Observatory worker: `python -m jobs.run_worker [--bulk]`.

What `arq jobs.worker.WorkerSettings` does (arq's own logging set-up, then `run_worker`), with
arq's Worker as `ObservatoryWorker` (below), on uvloop: measured with bench/deliveries.py, the
stock asyncio loop (its selector, its Python `Handle` and transport code) was about a fifth of
a worker's CPU time, and uvloop cuts the worker's CPU per delivery by ~12%.
`OBSERVATORY_UVLOOP=0` keeps the stock loop. `observatory up` and the benchmarks start workers
this way; the `arq` command still works (with arq's own Worker).
"""

from __future__ import annotations

import argparse
import asyncio
import logging.config
import os

from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker, get_kwargs, logger
from redis.commands.core import AsyncScript


class ObservatoryWorker(Worker):
    """arq's Worker, except that a poll does not try to start again the jobs this worker is
    running.

    arq keeps a running job in its queue until the job ends, and every poll (each
    `poll_delay`, 50 ms) reads the due jobs again and tries each one: WATCH its in-progress
    key, EXISTS, ZSCORE, UNWATCH, three round trips to find the key this worker set itself.
    Bulk-lane jobs wait for their endpoint's claim gate while holding their slot, so a bulk
    worker sent 0.7 Redis commands per delivery doing this (bench.bulk_retry, SQLite, 100,000
    entries: watch, exists and zscore 0.18 each, unwatch 0.16). A job this worker holds is
    skipped locally; everything else (other workers' jobs, deferred and finished ones) goes
    through arq's checks as before.

    A job is started with one round trip (`_START`, a Lua script) instead of arq's four
    (WATCH, EXISTS, ZSCORE, then MULTI/PSETEX/EXEC), under the same rule: the job is still
    queued and due, no worker holds its in-progress key, and taking that key is atomic with
    the checks. It interoperates with arq's own Worker: a script runs atomically, and its
    PSETEX makes a concurrent arq start's EXEC fail on its WATCH. Measured here, redis-py
    spends ~70 µs of client CPU per round trip: arq's start was 246 µs per job, the script
    73 µs (a fast-lane job carries 50 deliveries).
    """

    _start_script: AsyncScript | None = None

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        running = {job_id for job_id, task in self.tasks.items() if not task.done()}
        if self._start_script is None:
            self._start_script = self.pool.register_script(_START)
        in_progress_ms = int(self.in_progress_timeout_s * 1000)
        for job_id_b in job_ids:
            job_id = job_id_b.decode()
            if job_id in running:
                continue
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            score = await self._start_script(
                keys=[in_progress_key_prefix + job_id, self.queue_name],
                args=[job_id, timestamp_ms(), in_progress_ms])
            if score is None:  # running elsewhere, finished, or deferred again meanwhile
                self.job_counter -= 1
                self.sem.release()
                logger.debug("job %s already running elsewhere", job_id)
                continue
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task


#: KEYS: the job's in-progress key, the queue; ARGV: job id, now (ms), in-progress TTL (ms).
#: Returns the job's score once its in-progress key is ours, nil when it may not start.
_START = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
"""


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
    ObservatoryWorker(**get_kwargs(settings)).run()  # arq's run_worker, with our Worker


if __name__ == "__main__":
    main()
