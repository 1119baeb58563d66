"""Cron ticks with several workers: each tick of a 1-second schedule must run exactly once.

    .venv/bin/python -m bench.cron_ticks [--minutes 10] [--workers 2] [--database-url URL]

Starts `--workers` real arq workers (the arq CLI, `bench.cron_ticks.BenchWorkerSettings`)
sharing one Redis and one database, all declaring the same `* * * * * *` test schedule through
jobs.cron (arq unique cron ids + the CronRun CAS). The job body counts its executions per tick
in a Redis hash, so a tick run twice is seen even if only one row could be written. After the
run, over the window where every worker was up (first tick seen + 5 s … stop − 3 s), it reports
ticks expected vs recorded (succeeded, missed), ticks executed more than once, drift, and the
ticks with no row at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobs.cron import CronSpec, arq_cron_jobs, register_cron_jobs, tick_of
from jobs.embedded_redis import EmbeddedRedis

NAME = "bench_tick"


def executions_key() -> str:
    return f"{os.environ.get('OBSERVATORY_NAMESPACE', 'bench')}:bench:cron_executions"


async def _count_execution(ctx: dict[str, Any]) -> None:
    """The test job: count this execution of its tick (a duplicate would show as 2)."""
    tick = tick_of(ctx, NAME)
    await ctx["redis"].hincrby(executions_key(), str(int(tick.timestamp())), 1)


SPECS = [CronSpec(NAME, "* * * * * *", "bench: every second", _count_execution)]


async def _startup(ctx: dict[str, Any]) -> None:
    from models.db import init_db

    await init_db()
    await register_cron_jobs(SPECS)


async def _shutdown(ctx: dict[str, Any]) -> None:
    from models.db import close_db

    await close_db()


async def _noop(ctx: dict[str, Any]) -> None:
    return None


def _settings() -> Any:
    from arq.connections import RedisSettings

    from jobs.queue import queue_name

    url = os.environ.get("REDIS_URL")
    return RedisSettings.from_dsn(url) if url else RedisSettings(), queue_name()


class BenchWorkerSettings:
    """Only the bench's cron job (no delivery cron jobs, no heartbeats)."""

    functions = [_noop]
    cron_jobs = arq_cron_jobs(SPECS)
    on_startup = _startup
    on_shutdown = _shutdown
    redis_settings, queue_name = _settings()
    poll_delay = 0.05
    max_jobs = 16
    keep_result = 60
    handle_signals = True


def _env(args: argparse.Namespace, tmp: Path, redis_url: str) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "DATABASE_URL": args.database_url or f"sqlite://{tmp / 'bench.db'}",
            "REDIS_URL": redis_url, "OBSERVATORY_DATA_DIR": str(tmp),
            "OBSERVATORY_NAMESPACE": f"bench-cron-{os.getpid()}",
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


async def _report(started: datetime, stopped: datetime) -> dict[str, Any]:
    from arq.connections import RedisSettings, create_pool

    from models.cron import CronRun

    first = (started + timedelta(seconds=6)).replace(microsecond=0)  # whole-second ticks
    window = (first, (stopped - timedelta(seconds=3)).replace(microsecond=0))
    expected = [window[0] + timedelta(seconds=s)
                for s in range(int((window[1] - window[0]).total_seconds()) + 1)]
    rows = await CronRun.filter(job_id=NAME, scheduled_at__gte=window[0],
                                scheduled_at__lte=window[1]).values_list(
        "scheduled_at", "status", "drift_ms", "error")
    per_tick: dict[int, list[str]] = {}
    for at, status, _, _ in rows:
        per_tick.setdefault(int(at.timestamp()), []).append(str(status.value))
    redis = await create_pool(RedisSettings.from_dsn(os.environ["REDIS_URL"]))
    executions = {int(k): int(v) for k, v in (await redis.hgetall(executions_key())).items()}
    await redis.aclose()
    ticks = [int(t.timestamp()) for t in expected]
    drifts = sorted(d for _, s, d, _ in rows if d is not None)
    missed = [(at.isoformat(), err) for at, s, _, err in rows if str(s.value) == "missed"]
    return {
        "window_s": len(ticks),
        "ticks_expected": len(ticks),
        "ticks_recorded": sum(1 for t in ticks if t in per_tick),
        "succeeded": sum(1 for t in ticks if per_tick.get(t) == ["succeeded"]),
        "missed": len(missed),
        "missed_examples": missed[:5],
        "ticks_without_row": [t for t in ticks if t not in per_tick][:10],
        "rows_duplicated": sum(1 for t in ticks if len(per_tick.get(t, [])) > 1),
        "ticks_executed_twice_or_more": sum(1 for t in ticks if executions.get(t, 0) > 1),
        "ticks_executed_once": sum(1 for t in ticks if executions.get(t, 0) == 1),
        "drift_ms_median": round(statistics.median(drifts), 1) if drifts else None,
        "drift_ms_p99": round(drifts[int(len(drifts) * 0.99) - 1], 1) if drifts else None,
        "drift_ms_max": round(drifts[-1], 1) if drifts else None,
    }


async def _migrate() -> None:
    from models.db import migrate_db

    await migrate_db()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cron-"))
    redis = EmbeddedRedis(tmp / "redis").start()
    env = _env(args, tmp, redis.url + "/0")
    os.environ.update(env)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        asyncio.run(_migrate())
        for n in range(args.workers):
            log = open(tmp / f"worker-{n}.log", "wb")  # noqa: SIM115 - closed with the process
            procs.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "arq"), "bench.cron_ticks.BenchWorkerSettings"],
                env=env, stdout=log, stderr=subprocess.STDOUT))
        time.sleep(3)  # both workers imported and connected
        started = datetime.now(UTC)
        print(f"{args.workers} workers, 1-second schedule, {args.minutes} min "
              f"(logs in {tmp})", file=sys.stderr)
        time.sleep(args.minutes * 60)
        stopped = datetime.now(UTC)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    result = asyncio.run(_finish(started, stopped))
    redis.stop()
    print(json.dumps({"workers": args.workers, "minutes": args.minutes, **result}, indent=2))


async def _finish(started: datetime, stopped: datetime) -> dict[str, Any]:
    from models.db import close_db, init_db

    await init_db()
    try:
        return await _report(started, stopped)
    finally:
        await close_db()


if __name__ == "__main__":
    main()
