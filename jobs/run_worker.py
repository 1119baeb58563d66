"""Run an Observatory worker: `python -m jobs.run_worker [--bulk]`.

What `arq jobs.worker.WorkerSettings` does (arq's own logging set-up, then `run_worker`), on
uvloop: measured with bench/deliveries.py, the stock asyncio loop (its selector, its Python
`Handle` and transport code) was about a fifth of a worker's CPU time, and uvloop cuts the
worker's CPU per delivery by ~12%. `OBSERVATORY_UVLOOP=0` keeps the stock loop.
`observatory up` and the benchmarks start workers this way; the `arq` command still works.
"""

from __future__ import annotations

import argparse
import asyncio
import logging.config
import os


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
    from arq.worker import run_worker

    from jobs.worker import BulkWorkerSettings, WorkerSettings

    logging.config.dictConfig(default_log_config(args.verbose))
    use_uvloop()  # before arq's Worker makes its loop (asyncio.get_event_loop())
    run_worker(BulkWorkerSettings if args.bulk else WorkerSettings)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
