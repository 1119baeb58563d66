"""Lab harness (not the benchmark of record, bench/deliveries.py is): CPU per delivery of the
fast lane's own path in one process, without arq — publish N, run `deliver_batch` on batches of
50 with `--jobs` in flight, then the same-transport raw loop — for trying a change quickly; CPU
time moves much less than throughput on a busy machine. `LAB_PROFILE=out.prof` writes a
cProfile of the engine part (inflates small calls; use it for structure, not for µs).

    PYTHONPATH=. .venv/bin/python -m bench.lab_fastlane --n 20000 --database-url postgres://...
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
import time

from bench.deliveries import _Poster, _publish, _raw_loop, _reset_postgres, _setup, _env
from bench.scratch import scratch_dir
from jobs.embedded_redis import EmbeddedRedis, free_port


async def run(args, base: str) -> None:
    from arq import create_pool
    from jobs.deliver import deliver_batch, init_context, close_context
    from jobs.heartbeats import WorkerStats
    from jobs.queue import redis_settings
    from models.deliveries import Delivery

    app_id = await _setup([f"{base}/ok/0"])
    redis = await create_pool(redis_settings())
    await redis.flushdb()
    await _publish(app_id, args.n)
    ids = sorted(await Delivery.all().values_list("id", flat=True))
    ctx = {"redis": redis, "agent_id": "lab", "job_id": "lab"}
    init_context(ctx)
    ctx["metrics"] = WorkerStats()
    logging.getLogger("observatory").addHandler(logging.FileHandler(os.devnull))
    logging.getLogger("observatory").setLevel(logging.INFO)
    logging.getLogger("observatory").propagate = False
    from jobs.worker import tune_gc

    tune_gc()  # the worker's garbage-collector settings, for the engine and the raw loop alike
    batches = [ids[i:i + 50] for i in range(0, len(ids), 50)]
    sem = asyncio.Semaphore(args.jobs)

    async def one(batch):
        async with sem:
            await deliver_batch(ctx, batch)

    prof = None
    if os.environ.get("LAB_PROFILE"):
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(b) for b in batches))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if prof:
        prof.disable()
        prof.dump_stats(os.environ["LAB_PROFILE"])
    print(f"lab engine: {len(ids) / wall:,.0f}/s, {cpu / len(ids) * 1e6:.1f} µs CPU per delivery")
    await close_context(ctx)
    if not args.engine_only:
        rate, raw_cpu, _ = await _raw_loop(args.n, f"{base}/ok/0", _Poster)
        print(f"raw loop: {rate:,.0f}/s, {raw_cpu:.1f} µs CPU per delivery; "
              f"CPU ratio {raw_cpu / (cpu / len(ids) * 1e6):.2f}")
    from models.db import close_db
    await redis.aclose()
    await close_db()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--jobs", type=int, default=16)
    p.add_argument("--database-url", required=True)
    p.add_argument("--engine-only", action="store_true", help="skip the raw loop")
    args = p.parse_args()
    with scratch_dir("observatory-lab-") as tmp:
        redis = EmbeddedRedis(tmp / "redis").start()
        port = free_port()
        sink = subprocess.Popen([sys.executable, "-m", "bench.receiver", "--port", str(port)])
        os.environ.update(_env(args, tmp, redis.url + "/0"))
        try:
            asyncio.run(_reset_postgres(args.database_url))
            time.sleep(0.5)
            from jobs.run_worker import use_uvloop

            use_uvloop()  # as the workers run
            asyncio.run(run(args, f"http://127.0.0.1:{port}"))
        finally:
            sink.terminate(); sink.wait(10); redis.stop()


if __name__ == "__main__":
    main()
