"""Shared set-up of the DLQ benchmarks (bench/bulk_retry.py, bench/dlq_queries.py).

A `Stack` is what a benchmark runs against: a temporary directory, an embedded Redis, the bench
receiver (bench/receiver.py) and the database (a temporary SQLite file, or `--database-url`
whose `public` schema is dropped and re-created, as bench/deliveries.py does), plus the
processes it starts (the REST API under uvicorn, arq workers), all stopped at the end.

`fill_dlq` writes N failed deliveries and their DLQ entries straight into the tables, bypassing
the ORM, because the benchmarks measure what happens to a full DLQ, not how it was filled:
PostgreSQL through asyncpg's COPY, SQLite with executemany in one transaction. Ids are chosen
by the filler (after the current maximum) and the sequences moved past them, so the rows link
up without reading anything back.

`http_poster` is the load client of timed REST calls: httpx, or the lighter aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.deliveries import _reset_postgres
from bench.scratch import scratch_dir
from dashboard.api import UVICORN_ARGV
from jobs.embedded_redis import EmbeddedRedis, free_port

BIN = Path(sys.executable).parent
CHUNK = 20_000  # rows per COPY / executemany call
ERRORS = ("HTTP 500 Internal Server Error", "timeout: no answer within 30 s",
          "connection refused", "HTTP 503 Service Unavailable")
REASONS = ("max_attempts_exceeded", "non_retryable_status", "max_attempts_exceeded")


@dataclass
class Stack:
    database_url: str  # as given, or the temporary SQLite file's URL
    tmp: Path
    redis: EmbeddedRedis
    receiver_port: int
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    roles: dict[int, str] = field(default_factory=dict)  # pid → "worker", "bulk", "api", …

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgres")

    def receiver_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.receiver_port}/{path}"

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        """A child process logging to `{tmp}/{name}.log`, stopped with the stack."""
        proc = subprocess.Popen(argv, env={**self.env, **env},
                                stdout=open(self.tmp / f"{name}.log", "wb"),  # noqa: SIM115
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        self.roles[proc.pid] = name.split("-")[0]
        return proc

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds (user + system) so far of the stack's live processes by role, Redis
        included; a role's processes add up."""
        procs = {p.pid: self.roles.get(p.pid, "?") for p in self.procs if p.poll() is None}
        if self.redis.process is not None:
            procs[self.redis.process.pid] = "redis"
        spent: dict[str, float] = {}
        for pid, role in procs.items():
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.NoSuchProcess:
                continue
            spent[role] = spent.get(role, 0.0) + times.user + times.system
        return spent

    def start_api(self) -> str:
        """The REST API (`dashboard.api.app:api`) under uvicorn (uvloop, httptools); returns
        its base URL once `/v1/health` answers 200."""
        port = free_port()
        self.start("api", [str(BIN / UVICORN_ARGV[0]), *UVICORN_ARGV[1:], "--host",
                           "127.0.0.1", "--port", str(port), "--log-level", "warning"])
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/v1/health", timeout=2).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the API did not start: see {self.tmp / 'api.log'}")

    def start_workers(self, *, delivery: int = 1, bulk: int = 1,
                      **env: str) -> list[subprocess.Popen[bytes]]:
        """arq workers as `observatory up` starts them (`python -m jobs.run_worker`, on
        uvloop): `jobs.worker.WorkerSettings` on the main queue and
        `jobs.worker.BulkWorkerSettings` on the bulk lane."""
        from dashboard.cli.up import WORKER_ARGV

        stamp = f"{time.monotonic_ns()}"
        return ([self.start(f"worker-{stamp}-{i}", WORKER_ARGV, **env) for i in range(delivery)]
                + [self.start(f"bulk-{stamp}-{i}", [*WORKER_ARGV, "--bulk"], **env)
                   for i in range(bulk)])

    def stop(self, procs: Sequence[subprocess.Popen[bytes]] | None = None) -> None:
        """SIGTERM, then SIGKILL after 15 s (see README "Known issues": arq shutdown)."""
        procs = list(self.procs if procs is None else procs)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc in self.procs:
                self.procs.remove(proc)


@contextmanager
def stack(database_url: str, *, reset: bool = True, **env: str) -> Iterator[Stack]:
    """Redis, the receiver and a reset database (`reset=False`: as it is, to reuse an earlier
    run's rows); the process environment points at them (so this process's tortoise and Redis
    clients use them too)."""
    with scratch_dir("observatory-bench-") as tmp:
        redis = EmbeddedRedis(tmp / "redis").start()
        port = free_port()
        url = database_url or f"sqlite://{tmp / 'bench.db'}"
        os.environ.update({"DATABASE_URL": url, "REDIS_URL": redis.url + "/0",
                           "OBSERVATORY_DATA_DIR": str(tmp),
                           "OBSERVATORY_NAMESPACE": f"bench-{os.getpid()}",
                           "OBSERVATORY_DESTINATION_ALLOWLIST": "127.0.0.0/8", **env})
        st = Stack(url, tmp, redis, port, os.environ.copy())
        st.start("receiver", [sys.executable, "-m", "bench.receiver", "--port", str(port)])
        try:
            if st.is_postgres and reset:
                asyncio.run(_reset_postgres(url))
            yield st
        finally:
            st.stop()
            redis.stop()


#: indexes the models declare (or need) that the migrations do not create; `--proposed-indexes`
#: creates them by hand to measure the difference (a proposal: models/ and migrations are
#: the lead's)
PROPOSED_INDEXES = (
    # Delivery.claim_token is `db_index=True` but 0003 made no index: every batch's read-back
    # (`WHERE claim_token = $1`: worker claim, walker, cancel) scans the whole delivery table
    'CREATE INDEX IF NOT EXISTS "idx_delivery_claim_token" ON "delivery" ("claim_token")',
)


async def open_db(*, proposed_indexes: bool = False) -> None:
    """Migrate the (fresh) database and connect this process's tortoise to it."""
    from tortoise import connections

    from models.db import init_db, migrate_db

    await migrate_db()
    await init_db()
    if proposed_indexes:
        for sql in PROPOSED_INDEXES:
            await connections.get("default").execute_script(sql)


async def server_settings() -> str:
    """PostgreSQL's settings that move these figures most, as this server has them (a
    server with autovacuum off keeps every dead row version of the run; 128 MB of shared
    buffers no longer hold a 100,000-entry run's tables); empty on SQLite."""
    from tortoise import connections

    conn = connections.get("default")
    if conn.capabilities.dialect != "postgres":
        return ""
    found = []
    for name in ("autovacuum", "shared_buffers", "synchronous_commit"):
        rows = await conn.execute_query_dict(f"SHOW {name}")
        found.append(f"{name} {rows[0][name]}")
    return "PostgreSQL server: " + ", ".join(found)


async def make_token(name: str = "bench") -> str:
    """An admin's API token (models.auth.create_user)."""
    from models.auth import create_user
    from models.enums import Role

    _, _, token = await create_user(f"{name}-{time.time_ns()}", Role.ADMIN)
    return token


async def make_endpoints(stack: Stack, paths: list[str], *,
                         max_in_flight: int = 64) -> tuple[int, list[tuple[int, str]]]:
    """A new application with one endpoint per receiver path; (app id, [(id, url)])."""
    from jobs.signing import generate_secret
    from models.endpoints import Application, Endpoint

    app = await Application.create(name=f"bench-{time.time_ns()}")
    endpoints = []
    for path in paths:
        e = await Endpoint.create(app=app, url=stack.receiver_url(path),
                                  secret=generate_secret(), max_in_flight=max_in_flight)
        endpoints.append((e.id, e.url))
    return app.id, endpoints


# --- filling the DLQ --------------------------------------------------------------------------

@dataclass
class Fill:
    first_id: int  # DLQ entry ids first_id..last_id
    last_id: int
    seconds: float

    @property
    def n(self) -> int:
        return self.last_id - self.first_id + 1


@dataclass
class FillSpec:
    app_id: int
    endpoints: list[tuple[int, str]]  # entry i goes to endpoints[i % len]
    n: int
    event_types: int = 1  # `bench.{i % event_types}`
    payload_bytes: int = 900
    spread: timedelta = timedelta(0)  # created_at from now - spread up to now, ascending with id
    status: Callable[[int], str] = lambda i: "active"


_MESSAGE = ("id", "app_id", "event_type", "payload", "created_at")
_DELIVERY = ("id", "message_id", "endpoint_id", "status", "attempts", "last_error",
             "last_status_code", "metadata", "created_at", "updated_at", "finished_at")
_ENTRY = ("id", "delivery_id", "message_id", "endpoint_id", "endpoint_url", "status",
          "failure_reason", "event_type", "last_error", "error_history", "attempts", "policy",
          "metadata", "retry_count", "created_at", "updated_at", "resolved_at")


def _rows(spec: FillSpec, starts: dict[str, int], lo: int, hi: int,
          stamp: Callable[[datetime], Any]) -> tuple[list[tuple], list[tuple], list[tuple]]:
    now = datetime.now(UTC) - timedelta(seconds=1)  # before any operation's start
    step = spec.spread / max(spec.n, 1)
    blob = "x" * spec.payload_bytes
    policy = json.dumps({"max_attempts": 5, "backoff": "exponential"})
    messages, deliveries, entries = [], [], []
    for i in range(lo, hi):
        m, d, e = starts["message"] + i, starts["delivery"] + i, starts["dead_letter"] + i
        endpoint_id, url = spec.endpoints[i % len(spec.endpoints)]
        event_type = f"bench.{i % spec.event_types}"
        at = stamp(now - spec.spread + step * i)
        error = ERRORS[i % len(ERRORS)]
        status = spec.status(i)
        messages.append((m, spec.app_id, event_type,
                         json.dumps({"kind": "bench", "i": i, "blob": blob}), at))
        deliveries.append((d, m, endpoint_id, "failed", 5, error, 500, "{}", at, at, at))
        entries.append((e, d, m, endpoint_id, url, status, REASONS[i % len(REASONS)],
                        event_type, error,
                        json.dumps([{"attempt": 5, "status_code": 500, "error": error}]), 5,
                        policy, json.dumps({"event_type": event_type}), 0, at, at,
                        at if status == "resolved" else None))
    return messages, deliveries, entries


async def fill_dlq(stack: Stack, spec: FillSpec) -> Fill:
    """Write `spec.n` messages, failed deliveries and DLQ entries in bulk (see module doc)."""
    t0 = time.perf_counter()
    if stack.is_postgres:
        first = await _fill_postgres(stack.database_url, spec)
    else:
        path = stack.database_url.removeprefix("sqlite://").split("?")[0]
        first = await asyncio.to_thread(_fill_sqlite, path, spec)
    return Fill(first, first + spec.n - 1, time.perf_counter() - t0)


async def _fill_postgres(url: str, spec: FillSpec) -> int:
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    try:
        starts = {t: await conn.fetchval(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {t}")
                  for t in ("message", "delivery", "dead_letter")}
        async with conn.transaction():
            for lo in range(0, spec.n, CHUNK):
                messages, deliveries, entries = _rows(spec, starts, lo,
                                                      min(lo + CHUNK, spec.n), lambda t: t)
                await conn.copy_records_to_table("message", records=messages, columns=_MESSAGE)
                await conn.copy_records_to_table("delivery", records=deliveries,
                                                 columns=_DELIVERY)
                await conn.copy_records_to_table("dead_letter", records=entries,
                                                 columns=_ENTRY)
            for table in starts:
                await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                   f"(SELECT MAX(id) FROM {table}))")
        # what autovacuum would do within a minute of such a load (an insert-only load this
        # size triggers both its ANALYZE and, since PostgreSQL 13, its VACUUM); plans depend on
        # it: statistics, and the visibility map that index-only scans (the DLQ stats) need.
        # Done here because a server may run with autovacuum off, as the bench machine does.
        # (dead_letter_search too: its triggers fill it with the entries, and without its
        # statistics the planner took `q` to match 16 rows of 1,000,000 where 250,000 did:
        # GET /v1/dlq?endpoint_id=4&q=timeout ran 580 ms instead of 4 ms)
        await conn.execute("VACUUM (ANALYZE) message, delivery, dead_letter, dead_letter_search")
    finally:
        await conn.close()
    return starts["dead_letter"]


def _sqlite_time(t: datetime) -> str:
    """tortoise's SQLite text form of an aware datetime (compared as text by its queries)."""
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")


def _fill_sqlite(path: str, spec: FillSpec) -> int:
    conn = sqlite3.connect(path, timeout=30)
    try:
        starts = {t: conn.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {t}").fetchone()[0]
                  for t in ("message", "delivery", "dead_letter")}
        with conn:  # one transaction
            for lo in range(0, spec.n, CHUNK):
                for table, columns, rows in zip(
                        ("message", "delivery", "dead_letter"), (_MESSAGE, _DELIVERY, _ENTRY),
                        _rows(spec, starts, lo, min(lo + CHUNK, spec.n), _sqlite_time),
                        strict=True):
                    conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                                     f"({', '.join('?' * len(columns))})", rows)
        conn.execute("ANALYZE")
    finally:
        conn.close()
    return starts["dead_letter"]


# --- load clients -----------------------------------------------------------------------------

@asynccontextmanager
async def http_poster(kind: str, base: str, token: str
                      ) -> AsyncIterator[Callable[[str, bytes | None], Awaitable[int]]]:
    """One keep-alive client connection as `post(path, body) -> status` (a GET without a
    body): httpx, or aiohttp, whose own CPU per request is a fraction of httpx's (the clients
    share this process and the machine with the API, so a heavy client slows what it times)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    if kind == "httpx":
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as c:
            async def post_httpx(path: str, body: bytes | None) -> int:
                r = await (c.get(path) if body is None else c.post(path, content=body))
                return r.status_code
            yield post_httpx
        return
    import aiohttp

    async with aiohttp.ClientSession(base, headers=headers,
                                     timeout=aiohttp.ClientTimeout(total=30),
                                     connector=aiohttp.TCPConnector(limit=1)) as session:
        async def post_aiohttp(path: str, body: bytes | None) -> int:
            async with (session.get(path) if body is None
                        else session.post(path, data=body)) as r:
                await r.read()
                return r.status
        yield post_aiohttp


# --- figures ----------------------------------------------------------------------------------

def p95(samples_ms: list[float]) -> float:
    return statistics.quantiles(samples_ms, n=20, method="inclusive")[18] if len(
        samples_ms) > 1 else samples_ms[0]


def describe(samples_ms: list[float]) -> str:
    return (f"p50 {statistics.median(samples_ms):.1f} ms, p95 {p95(samples_ms):.1f} ms, "
            f"max {max(samples_ms):.1f} ms (n={len(samples_ms)})")


def as_datetime(value: Any) -> datetime:
    """A timestamp read with a raw query (SQLite answers text)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
