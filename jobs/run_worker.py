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

from arq.worker import Worker, get_kwargs


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
    """

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        running = {job_id for job_id, task in self.tasks.items() if not task.done()}
        await super().start_jobs([job_id for job_id in job_ids
                                  if job_id.decode() not in running])


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
