"""Migrations: they build the schema and match the models (no forgotten makemigrations)."""

from __future__ import annotations

from tortoise.migrations.autodetector import MigrationAutodetector

from models.db import tortoise_config


async def test_models_have_no_changes_missing_from_migrations(db):
    from tortoise import Tortoise

    config = tortoise_config(db)
    detector = MigrationAutodetector(Tortoise.apps, config["apps"])
    writers = await detector.changes()
    assert writers == [], "models changed: run `.venv/bin/tortoise makemigrations`"


async def test_migrated_schema_accepts_every_model(db):
    from models.agents import Agent, ScalingEvent
    from models.bulk import BulkOperation
    from models.cron import CronJob, CronRun
    from models.enums import BulkKind

    await Agent.create(id="w1", last_seen="2026-01-01T00:00:00Z")
    await ScalingEvent.create(direction="up", reason="queue depth 500")
    await BulkOperation.create(kind=BulkKind.RETRY, actor="alice", scope={"endpoint_id": 1})
    job = await CronJob.create(name="n", expression="* * * * *")
    await CronRun.create(job=job, scheduled_at="2026-01-01T00:00:00Z")
    assert await CronRun.filter(job_id="n").count() == 1


async def test_the_database_enforces_one_dlq_entry_per_delivery(db):
    """The unique key the model declares exists for real (migration 0008): a second entry for
    the same failed delivery is refused by the database itself, not only by our code."""
    import pytest
    from tortoise.exceptions import IntegrityError

    from models.dead_letters import DeadLetter
    from tests.factories import make_dead_letter, make_endpoint

    entry = await make_dead_letter(await make_endpoint("http://127.0.0.1:9/hook"))
    with pytest.raises(IntegrityError):
        await DeadLetter.create(delivery_id=entry.delivery_id,  # type: ignore[attr-defined]
                                message_id=entry.message_id,  # type: ignore[attr-defined]
                                endpoint_url="x", failure_reason="max_attempts_exceeded")


async def test_hot_lookups_have_their_indexes(db):
    from tortoise import connections

    conn = connections.get("default")
    if conn.capabilities.dialect == "sqlite":
        rows = await conn.execute_query_dict(
            "SELECT name FROM sqlite_master WHERE type = 'index'")
    else:
        rows = await conn.execute_query_dict("SELECT indexname AS name FROM pg_indexes")
    names = {r["name"] for r in rows}
    assert {"idx_delivery_claim_token", "idx_delivery_claimed_by", "idx_attempt_delivery",
            "uid_dead_letter_delivery", "idx_dead_letter_endpoint"} <= names
