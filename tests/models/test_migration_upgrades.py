"""Upgrades of databases that hold data: each migration that adds a NOT NULL column or a unique
key to a table the code before it wrote rows into is applied over such rows, on a database of
its own (a SQLite file, or a PostgreSQL schema beside the test database's), and the rows come
out with the values the columns mean for them."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from tortoise import Tortoise, connections
from tortoise.context import TortoiseContext
from tortoise.exceptions import IntegrityError
from tortoise.migrations.api import migrate

from models.db import tortoise_config

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)

Step = Callable[..., Any]


@pytest_asyncio.fixture
async def upgrade(test_environment: dict[str, str], tmp_path: Path) -> AsyncIterator[Step]:
    """`async with upgrade("0006_cron") as conn:` migrates a fresh database of this test to
    that migration (no argument: to the last one) in a context of its own, like one run of
    `observatory migrate`, and yields the connection; the ORM models use it inside.

    The first step must name a migration: the way to head is a second step, over data."""
    base = test_environment["DATABASE_URL"]
    schema = f"upgrade_{uuid.uuid4().hex[:12]}" if base.startswith("postgres") else None
    steps: list[str | None] = []

    def url_for(first: bool) -> str:
        if schema is None:
            return f"sqlite://{tmp_path / 'upgrade.db'}"
        # Migration 0009 needs pg_trgm's operator classes, which live in `public`. `public`
        # holds the test database's own tables too, and an unqualified name missing here
        # would reach them (the recorder's first read, before it creates its table, would
        # roll them back), so it joins the path only after the first step, once this schema
        # has its own tables (a first step must stop before 0009).
        path = schema if first else f"{schema},public"
        return base + ("&" if "?" in base else "?") + f"schema={path}"

    @asynccontextmanager
    async def step(target: str | None = None) -> AsyncIterator[Any]:
        if target is None and not steps:
            raise ValueError("upgrade(): migrate to an earlier migration first")
        steps.append(target)
        config = tortoise_config(url_for(len(steps) == 1))
        async with TortoiseContext():
            await migrate(config=config, target=f"models.{target}" if target else None)
        async with TortoiseContext():
            await Tortoise.init(config=config)
            yield connections.get("default")

    if schema:
        await _admin(base, f'CREATE SCHEMA "{schema}"')
    try:
        yield step
    finally:
        if schema:
            await _admin(base, f'DROP SCHEMA "{schema}" CASCADE')


async def _admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(re.sub(r"^postgres(ql)?://", "postgresql://", url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _insert(conn: Any, table: str, **row: Any) -> None:
    """One row, written with exactly the columns the code of that time wrote."""
    postgres = conn.capabilities.dialect == "postgres"
    marks = [f"${i}" if postgres else "?" for i in range(1, len(row) + 1)]
    columns = ", ".join(f'"{c}"' for c in row)
    await conn.execute_query(
        f'INSERT INTO "{table}" ({columns}) VALUES ({", ".join(marks)})', list(row.values()))


# --- 0002: endpoint health, redirects, in-flight cap --------------------------------------------

async def test_0002_upgrades_endpoints_created_before_it(upgrade):
    """Endpoints of the foundation (0001) keep their settings; health starts clean, redirects
    stay unfollowed (the foundation never followed them), the cap is the default."""
    async with upgrade("0001_initial") as conn:
        # as dashboard/api/app.py created them then: Application, then Endpoint.create(...)
        await _insert(conn, "application", id=1, name="shop", created_at=T0)
        await _insert(conn, "endpoint", id=1, app_id=1, url="https://a.example/hook",
                      description="orders", secret="whsec_a", enabled=True,
                      event_types='["order.paid"]', created_at=T0, updated_at=T0)
        await _insert(conn, "endpoint", id=2, app_id=1, url="https://b.example/hook",
                      description="", secret="whsec_b", enabled=False,
                      disabled_reason="by hand", created_at=T0, updated_at=T0)

    async with upgrade():
        from models.endpoints import Endpoint

        rows = await Endpoint.all().order_by("id").values(
            "id", "url", "enabled", "disabled_reason", "event_types", "consecutive_failures",
            "failing_since", "follow_redirects", "max_in_flight", "previous_secret")
    assert rows == [
        {"id": 1, "url": "https://a.example/hook", "enabled": True, "disabled_reason": None,
         "event_types": ["order.paid"], "consecutive_failures": 0, "failing_since": None,
         "follow_redirects": False, "max_in_flight": None, "previous_secret": None},
        {"id": 2, "url": "https://b.example/hook", "enabled": False, "disabled_reason": "by hand",
         "event_types": None, "consecutive_failures": 0, "failing_since": None,
         "follow_redirects": False, "max_in_flight": None, "previous_secret": None},
    ]


# --- 0006: cron grace and timeout windows, run triggers -----------------------------------------

async def test_0006_upgrades_cron_jobs_and_runs_recorded_before_it(upgrade):
    """Jobs registered and runs recorded before 0006 keep their history; the jobs get the
    default windows (the next worker start sets each job's own), and every earlier run was a
    scheduled tick (there was no "run now" nor retry before 0006)."""
    async with upgrade("0004_bulk_operations") as conn:
        # as jobs/cron.py did then: register_cron_jobs(), then one CronRun per tick, its
        # scheduled_at the start time floored to the minute
        await _insert(conn, "cron_job", name="reconcile_deliveries", expression="* * * * *",
                      description="Re-enqueue due deliveries", paused=False,
                      last_run_at=T0 + timedelta(minutes=1, seconds=2),
                      next_run_at=T0 + timedelta(minutes=2), updated_at=T0)
        for minute, status, error in [(0, "succeeded", None), (1, "failed", "boom")]:
            start = T0 + timedelta(minutes=minute, seconds=2)
            await _insert(conn, "cron_run", job_id="reconcile_deliveries", status=status,
                          scheduled_at=T0 + timedelta(minutes=minute), started_at=start,
                          finished_at=start + timedelta(seconds=1), duration_ms=1000.0,
                          error=error)

    async with upgrade():
        from models.cron import CronJob, CronRun

        jobs = await CronJob.all().values("name", "expression", "paused", "grace_s",
                                          "timeout_s", "checked_until")
        runs = await CronRun.all().order_by("scheduled_at").values(
            "status", "trigger", "error", "actor", "retry_of_id", "drift_ms")
    assert jobs == [{"name": "reconcile_deliveries", "expression": "* * * * *", "paused": False,
                     "grace_s": 30.0, "timeout_s": 300.0, "checked_until": None}]
    assert runs == [
        {"status": "succeeded", "trigger": "schedule", "error": None, "actor": None,
         "retry_of_id": None, "drift_ms": None},
        {"status": "failed", "trigger": "schedule", "error": "boom", "actor": None,
         "retry_of_id": None, "drift_ms": None},
    ]


async def test_0006_keeps_every_run_of_a_tick_that_started_in_the_next_minute(upgrade):
    """Before 0006 a run's scheduled_at was its start floored to the minute: a tick that
    waited past the minute shares it with the next tick. Both runs stay, the later one
    scheduled at its own start, and the one-run-per-tick key exists."""
    late, on_time = T0 + timedelta(minutes=1, seconds=5), T0 + timedelta(minutes=1, seconds=6)
    async with upgrade("0004_bulk_operations") as conn:
        await _insert(conn, "cron_job", name="reconcile_deliveries", expression="* * * * *",
                      description="", paused=False, updated_at=T0)
        for start in (late, T0 + timedelta(minutes=2, seconds=1), on_time):
            await _insert(conn, "cron_run", job_id="reconcile_deliveries", status="succeeded",
                          scheduled_at=start.replace(second=0), started_at=start)

    async with upgrade():
        from models.cron import CronRun

        runs = await CronRun.all().order_by("id").values_list("scheduled_at", "started_at")
        with pytest.raises(IntegrityError):  # a second run of the 12:01 tick
            await CronRun.create(job_id="reconcile_deliveries", scheduled_at=T0.replace(minute=1))
    assert runs == [(T0.replace(minute=1), late),
                    (T0 + timedelta(minutes=2), T0 + timedelta(minutes=2, seconds=1)),
                    (on_time, on_time)]


# --- 0007: the fleet's agent figures -------------------------------------------------------------

async def test_0007_upgrades_agents_registered_before_it(upgrade):
    """Workers that beat before 0007 keep their rows: nothing reported yet (no queue, no
    version, no figures), a clean exit keeps its time (`stopped_at` = its last beat), and the
    fleet code takes them from there: the silent alive one becomes a zombie, the stopped one
    does not."""
    async with upgrade("0006_cron") as conn:
        # as jobs/heartbeats.py beat() did then: Agent.update_or_create(kind, host, pid,
        # status, last_seen), started_at and metadata from the model's defaults
        for pid, status, seen in [(11, "alive", T0), (12, "stopped", T0 + timedelta(hours=1))]:
            await _insert(conn, "agent", id=f"worker@h:{pid}", kind="worker", host="h",
                          pid=pid, status=status, started_at=T0 - timedelta(hours=1),
                          last_seen=seen, metadata="{}")

    async with upgrade():
        from jobs.fleet import sweep_zombies
        from models.agents import Agent

        fields = ["id", "status", "queue", "version", "running", "jobs_done", "succeeded",
                  "failed", "stopped_at", "zombie_at"]
        before = await Agent.all().order_by("id").values(*fields)
        now = T0 + timedelta(hours=2)
        swept = await sweep_zombies({}, now=now)
        after = await Agent.all().order_by("id").values_list("id", "status", "zombie_at")
    figures = {"queue": "", "version": "", "running": 0, "jobs_done": 0, "succeeded": 0,
               "failed": 0, "zombie_at": None}
    assert before == [
        {"id": "worker@h:11", "status": "alive", "stopped_at": None, **figures},
        {"id": "worker@h:12", "status": "stopped", "stopped_at": T0 + timedelta(hours=1),
         **figures},
    ]
    assert swept["zombies"] == 1
    assert after == [("worker@h:11", "zombie", now), ("worker@h:12", "stopped", None)]


# --- 0012: what `q` searches in a table of its own ----------------------------------------------

async def test_0012_keeps_every_entry_searchable(upgrade):
    """Entries of every status written before 0012 are found by `q` afterwards, by error,
    reason and URL (on PostgreSQL through the search rows 0012 copies them into), and so are
    entries written after it; `q`'s indexes left the entries' table."""
    from models.enums import DeadLetterStatus as S

    async with upgrade("0008_indexes"):
        pass
    async with upgrade("0011_delivery_partial_indexes") as conn:
        from tests.factories import make_dead_letter, make_endpoint

        endpoint = await make_endpoint("http://127.0.0.1:9/before-0012")
        before = {status: (await make_dead_letter(
            endpoint, status=status, last_error=f"{status.value} error before 0012")).id
            for status in S}

    async with upgrade() as conn:
        from models.dead_letters import DeadLetter, DeadLetterSearch
        from models.dlq_filter import DlqFilter, select
        from tests.factories import make_dead_letter

        async def found(q: str) -> list[int]:
            return list(await select(DlqFilter(q=q)).order_by("id").values_list(
                "id", flat=True))

        after = (await make_dead_letter(endpoint, last_error="written after 0012")).id
        for status, entry_id in before.items():
            assert await found(f"{status.value} error before") == [entry_id]
        assert await found("before-0012") == [*before.values(), after]
        assert await found("MAX_ATTEMPTS") == [*before.values(), after]
        assert await found("after 0012") == [after]
        postgres = conn.capabilities.dialect == "postgres"
        if postgres:
            assert await DeadLetterSearch.all().order_by("entry_id").values_list(
                "entry_id", "last_error") == await DeadLetter.all().order_by("id").values_list(
                "id", "last_error")
            indexes = await conn.execute_query_dict(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'dead_letter' "
                "AND schemaname = current_schema()")
            assert not [r for r in indexes if r["indexname"].endswith("_trgm")]


# --- 0015: SQLite's trigram index of what `q` searches ------------------------------------------

async def test_0015_indexes_the_entries_written_before_it(upgrade):
    """On SQLite the entries written before 0015 are in its index (a search finds them through
    it), and so are those written after; PostgreSQL is left as it was."""
    async with upgrade("0008_indexes"):  # a first step stops before 0009 (see `upgrade`)
        pass
    async with upgrade("0014_bulk_claimed_by_jobs"):
        from tests.factories import make_dead_letter, make_endpoint

        endpoint = await make_endpoint("http://127.0.0.1:9/before-0015")
        before = [(await make_dead_letter(endpoint, last_error=f"error {i} before 0015")).id
                  for i in range(3)]

    async with upgrade() as conn:
        from models.dlq_filter import DlqFilter, search_hint
        from models.queries import dead_letter_page
        from tests.factories import make_dead_letter

        after = (await make_dead_letter(endpoint, last_error="error after 0015")).id

        async def listed(q: str) -> list[int]:
            return sorted(e["id"] for e in (await dead_letter_page(DlqFilter(q=q)))["entries"])

        assert await listed("before 0015") == before
        assert await listed("error 1 before") == [before[1]]
        assert await listed("before-0015") == [*before, after]
        assert await listed("after 0015") == [after]
        if conn.capabilities.dialect == "sqlite":
            assert sorted(await search_hint(DlqFilter(q="before-0015")) or []) == [*before, after]
        else:
            assert await search_hint(DlqFilter(q="before-0015")) is None
