"""Delivery throughput: the real engine end to end vs raw loops on the same receiver.

    .venv/bin/python -m bench.deliveries [--n 20000] [--workers 1] [--database-url URL]
    .venv/bin/python -m bench.deliveries --isolation   # 10 endpoints, one answering after 10 s

Engine: batch publish → Delivery rows → fast lane (arq workers started as `observatory up`
starts them, `python -m jobs.run_worker`) →
the receiver (a separate process on 127.0.0.1) → Attempt rows and outcomes; its rate is
deliveries / (last finished − first attempt started), so publishing and worker start-up are
not counted. Raw loops post the same payloads with headers of the same shape (a webhook-id,
timestamp and signature made once), 64 at a time, with the engine's hot-path client
(the SSRF-guarded aiohttp session), with httpx over aiohttp, and with plain aiohttp, on the
event loop the workers run (uvloop; `OBSERVATORY_UVLOOP=0` puts both on the stock loop) and with
their garbage-collector settings (jobs.worker.tune_gc; `OBSERVATORY_GC_TUNING=0` leaves both on
Python's defaults). Peak RSS is sampled over the worker processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil

from bench.scratch import scratch_dir
from jobs.embedded_redis import EmbeddedRedis, free_port

PAYLOAD = {"blob": "x" * 900, "kind": "bench"}  # ~1 KB JSON body with the envelope
CONCURRENCY = 64
RECEIVER: psutil.Process | None = None  # the sink's process, set by main()


class _Usage:
    """CPU spent from here on: the receiver's per delivery, and the whole machine's busy share
    (the 2 cores are shared by the worker, the receiver, PostgreSQL and Redis)."""

    def __init__(self) -> None:
        self.receiver = RECEIVER.cpu_times() if RECEIVER else None
        self.machine = psutil.cpu_times()
        self.postgres = _postgres_cpu_s()

    def report(self, deliveries: int) -> str:
        now = psutil.cpu_times()
        idle = (now.idle + now.iowait) - (self.machine.idle + self.machine.iowait)
        total = sum(now) - sum(self.machine)
        text = f"machine busy {100 * (1 - idle / total):.0f}%"
        if steal := getattr(now, "steal", 0.0) - getattr(self.machine, "steal", 0.0):
            # time this VM's cores were taken by its host: figures of runs with much of it
            # are not comparable with those of runs without
            text += f" (stolen by the host {100 * steal / total:.0f}%)"
        if RECEIVER and self.receiver:
            spent = sum(RECEIVER.cpu_times()[:2]) - sum(self.receiver[:2])
            text += f", receiver {spent / deliveries * 1e6:,.0f} µs CPU per delivery"
        if self.postgres:  # every PostgreSQL server process on the machine, this run's or not
            spent = _postgres_cpu_s() - self.postgres
            text += f", PostgreSQL server {spent / deliveries * 1e6:,.0f} µs"
        return text


def _postgres_cpu_s() -> float:
    total = 0.0
    for proc in psutil.process_iter(["name", "cpu_times"]):
        if proc.info["name"] in ("postgres", "postmaster") and proc.info["cpu_times"]:
            total += proc.info["cpu_times"].user + proc.info["cpu_times"].system
    return total


async def _redis_calls() -> dict[str, int]:
    """Calls so far of each Redis command on the bench's Redis (INFO commandstats)."""
    from jobs.queue import connect

    redis = await connect()
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _per(before: dict[str, int], after: dict[str, int], n: int, top: int = 8) -> str:
    """The `top` commands by calls per delivery between two `_redis_calls` readings."""
    calls = {k: (v - before.get(k, 0)) / n for k, v in after.items()}
    ranked = sorted(calls.items(), key=lambda kv: -kv[1])[:top]
    return f"{sum(calls.values()):.2f} in all: " + ", ".join(f"{k} {v:.2f}" for k, v in ranked)


def _env(args: argparse.Namespace, tmp: Path, redis_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": args.database_url or f"sqlite://{tmp / 'bench.db'}",
            "REDIS_URL": redis_url, "OBSERVATORY_DATA_DIR": str(tmp),
            "OBSERVATORY_NAMESPACE": f"bench-{os.getpid()}",
            "OBSERVATORY_DESTINATION_ALLOWLIST": "127.0.0.0/8"}


def _signed_headers(body: bytes) -> dict[str, str]:
    """Headers shaped as the engine's (Standard Webhooks: id, timestamp, one signature), made
    once: a raw loop sends what the engine sends on the wire, but does none of its work."""
    from jobs.signing import generate_secret, signature_headers

    return signature_headers([generate_secret()], "msg_100000", int(time.time()),
                             body)


async def _raw_loop(n: int, url: str, make_post) -> tuple[float, float, str]:
    """Deliveries/s, this process's CPU time per delivery (µs), and the machine's usage."""
    body = json.dumps(PAYLOAD).encode()
    headers = _signed_headers(body)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(post) -> None:
        async with sem:
            await post(url, body, headers)

    async with make_post() as post:
        t0, cpu0, usage = time.perf_counter(), time.process_time(), _Usage()
        await asyncio.gather(*(one(post) for _ in range(n)))
        return (n / (time.perf_counter() - t0), (time.process_time() - cpu0) / n * 1e6,
                usage.report(n))


class _Engine:
    def __init__(self) -> None:
        from jobs.http import make_client
        self.client = make_client()

    async def __aenter__(self):
        async def post(url: str, body: bytes, headers: dict[str, str]) -> None:
            response = await self.client.post(url, content=body,
                                              headers={"content-type": "application/json",
                                                       **headers})
            assert response.status_code == 200
        return post

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()


class _Poster:
    """The engine's hot-path client: the SSRF-guarded aiohttp session (jobs.attempt.DirectPoster)."""

    async def __aenter__(self):
        from jobs.http import make_poster
        self.poster = make_poster()

        async def post(url: str, body: bytes, headers: dict[str, str]) -> None:
            result = await self.poster.post(url, body, headers)
            assert result.status_code == 200
        return post

    async def __aexit__(self, *exc) -> None:
        await self.poster.aclose()


class _Aiohttp:
    async def __aenter__(self):
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))

        async def post(url: str, body: bytes, headers: dict[str, str]) -> None:
            async with self.session.post(url, data=body, headers={
                    "content-type": "application/json", **headers}) as r:
                await r.read()
                assert r.status == 200
        return post

    async def __aexit__(self, *exc) -> None:
        await self.session.close()


async def _setup(urls: list[str]) -> int:
    from jobs.signing import generate_secret
    from models.db import init_db, migrate_db
    from models.endpoints import Application, Endpoint

    await migrate_db()
    await init_db()
    app = await Application.create(name=f"bench-{time.time()}")
    for url in urls:
        await Endpoint.create(app=app, url=url, secret=generate_secret(), max_in_flight=64)
    return app.id


async def _publish(app_id: int, n: int) -> float:
    from jobs.operations.publish import publish_messages
    from jobs.queue import connect

    redis = await connect()
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        items = [{"app_id": app_id, "event_type": "bench", "payload": PAYLOAD}
                 for _ in range(min(1000, n - start))]
        await publish_messages(items, redis=redis)
    rate = n / (time.perf_counter() - t0)
    await redis.aclose()
    return rate


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


async def _wait_done(total: int, workers: list[subprocess.Popen[bytes]]
                     ) -> tuple[int, float, str]:
    """Peak RSS of the workers, their CPU time (user + system) per delivery in µs, and the
    machine's usage, counted from the first finished delivery (start-up excluded) to the last."""
    from models.deliveries import Delivery
    from models.enums import DeliveryStatus

    from tortoise import connections

    conn = connections.get("default")
    procs = [psutil.Process(w.pid) for w in workers]
    peak = 0
    first: tuple[int, float, _Usage] | None = None
    while True:
        for proc in procs:
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.Error:
                pass
        # the highest Attempt id bounds the finished deliveries from above (ids only grow, and
        # every finished delivery here has an attempt) and is one index probe: counting the
        # finished rows 10 times a second (a 10 ms scan at 40,000 rows) would load PostgreSQL
        # with the benchmark's own polling, so they are counted only once the bound is reached
        rows = await conn.execute_query_dict("SELECT MAX(id) AS n FROM attempt")
        bound = rows[0]["n"] or 0
        if bound < total and not (first is None and bound):
            await asyncio.sleep(0.1)
            continue
        done = await Delivery.filter(status__in=[DeliveryStatus.SUCCEEDED,
                                                 DeliveryStatus.FAILED]).count()
        if first is None and done:
            first = (done, _cpu_s(procs), _Usage())
        if done >= total:
            assert first is not None
            if done == first[0]:
                return peak, float("nan"), ""
            return (peak, (_cpu_s(procs) - first[1]) / (done - first[0]) * 1e6,
                    first[2].report(done - first[0]))
        await asyncio.sleep(0.1)


async def _rate(endpoint_ids: list[int] | None = None) -> float:
    from tortoise import connections

    conn = connections.get("default")
    where = ""
    if endpoint_ids:
        where = f"WHERE d.endpoint_id IN ({','.join(map(str, endpoint_ids))})"
    rows = await conn.execute_query_dict(
        f"SELECT COUNT(*) AS n, MIN(a.started_at) AS t0, MAX(d.finished_at) AS t1 FROM delivery d "
        f"JOIN attempt a ON a.delivery_id = d.id {where}")
    row = rows[0]
    t0, t1 = row["t0"], row["t1"]
    if isinstance(t0, str):
        from datetime import datetime
        t0, t1 = datetime.fromisoformat(t0), datetime.fromisoformat(t1)
    return row["n"] / (t1 - t0).total_seconds()


def _start_workers(count: int, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    from dashboard.cli.up import WORKER_ARGV

    logs = Path(env["OBSERVATORY_DATA_DIR"])
    return [subprocess.Popen(WORKER_ARGV, env=env,
                             stdout=open(logs / f"worker-{i}.log", "wb"),  # noqa: SIM115
                             stderr=subprocess.STDOUT)
            for i in range(count)]


async def run(args: argparse.Namespace, base_url: str) -> None:
    from jobs.queue import connect
    from models.endpoints import Endpoint

    if args.isolation:
        last = "ok" if args.all_healthy else "slow"
        urls = [f"{base_url}/ok/{i}" for i in range(9)] + [f"{base_url}/{last}/9"]
    else:
        urls = [f"{base_url}/ok/0"]
    app_id = await _setup(urls)
    from bench._common import server_settings  # (bench._common imports this module)

    if settings := await server_settings():
        print(settings)
    redis = await connect()
    await redis.flushdb()
    await redis.aclose()
    publish_rate = await _publish(app_id, args.n)
    total = args.n * len(urls)
    commands0 = await _redis_calls()
    workers = _start_workers(args.workers, os.environ.copy())
    try:
        slow = args.isolation and not args.all_healthy
        peak, cpu_us, usage = await _wait_done(total - args.n if slow else total, workers)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:  # see README "Known issues": arq shutdown
                worker.kill()
                worker.wait()
    healthy = [e.id for e in await Endpoint.filter(app_id=app_id)
               if "/ok/" in e.url and not e.url.endswith("/ok/9")]  # the same nine either way
    engine = await _rate(healthy)
    commands = _per(commands0, await _redis_calls(), total)
    print(f"publish (batch API op, {args.n} messages): {publish_rate:,.0f} messages/s")
    print(f"engine end-to-end, {args.workers} worker(s), {len(healthy)} healthy endpoint(s): "
          f"{engine:,.0f} deliveries/s")
    print(f"worker peak RSS: {peak / 2**20:,.0f} MB")
    print(f"Redis commands per delivery (start-up included): {commands}")
    # CPU per delivery hardly depends on what else the machine runs (throughput does)
    print(f"worker CPU per delivery: {cpu_us:,.0f} µs ({usage})")
    if not args.isolation:
        # the raw loops run with the workers' garbage-collector settings, as on their event
        # loop: under Python's defaults the same loop spent ~19 µs per delivery collecting
        # (its thousands of waiting tasks are live objects), a fifth of its CPU time
        from jobs.worker import tune_gc

        tune_gc()
        same, same_cpu, same_usage = await _raw_loop(args.n, urls[0], _Poster)
        httpx_loop, _, _ = await _raw_loop(args.n, urls[0], _Engine)
        plain, _, _ = await _raw_loop(args.n, urls[0], _Aiohttp)
        print(f"raw loop, engine's hot-path client (guarded aiohttp session): {same:,.0f} deliveries/s,"
              f" {same_cpu:,.0f} µs CPU per delivery ({same_usage})")
        print(f"raw loop, httpx over aiohttp (the engine's general client): {httpx_loop:,.0f} deliveries/s")
        print(f"raw loop, plain aiohttp: {plain:,.0f} deliveries/s")
        print(f"engine / same-transport raw loop (target >= 0.8): {engine / same:.2f}")
        print(f"engine / httpx-over-aiohttp loop: {engine / httpx_loop:.2f}")
        print(f"engine / plain aiohttp loop: {engine / plain:.2f}")
    from models.db import close_db

    await close_db()  # aiosqlite's thread would otherwise keep the process alive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages (one delivery each per endpoint)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--database-url", default="", help="default: a temporary SQLite file")
    parser.add_argument("--isolation", action="store_true",
                        help="10 endpoints, one answering after 10 s (use e.g. --n 2000)")
    parser.add_argument("--all-healthy", action="store_true",
                        help="with --isolation: the tenth endpoint is healthy too (the baseline)")
    parser.add_argument("--aiohttp-receiver", action="store_true",
                        help="the receiver runs aiohttp's web server (default: bench.receiver's"
                             " bare httptools server, which takes less of the machine)")
    args = parser.parse_args()
    with scratch_dir("observatory-bench-") as tmp:
        redis = EmbeddedRedis(tmp / "redis").start()
        port = free_port()
        sink = subprocess.Popen([sys.executable, "-m", "bench.receiver", "--port", str(port),
                                 *(["--aiohttp"] if args.aiohttp_receiver else [])])
        global RECEIVER
        RECEIVER = psutil.Process(sink.pid)
        os.environ.update(_env(args, tmp, redis.url + "/0"))
        try:
            if args.database_url.startswith("postgres"):
                asyncio.run(_reset_postgres(args.database_url))
            time.sleep(0.5)
            from jobs.run_worker import use_uvloop

            # the raw loops run on the workers' event loop: the same client, transport and loop
            print(f"event loop (workers and raw loops): {'uvloop' if use_uvloop() else 'asyncio'}")
            print("receiver: " + ("aiohttp's web server" if args.aiohttp_receiver
                                  else "bench.receiver's bare HTTP/1.1 server (httptools, uvloop)"))
            asyncio.run(run(args, f"http://127.0.0.1:{port}"))
        finally:
            sink.terminate()
            sink.wait(10)
            redis.stop()


async def _reset_postgres(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    await conn.close()


if __name__ == "__main__":
    main()
