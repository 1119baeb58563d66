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
