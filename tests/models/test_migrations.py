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


def _migration_0009():
    import importlib

    return importlib.import_module("models.migrations.0009_dead_letter_copies")


async def test_migration_0009_backfills_the_copies_of_existing_entries(db):
    """Entries written before 0009 (copies blank) get their message's event type and their
    delivery's last error."""
    from types import SimpleNamespace

    from tortoise import connections

    from models.dead_letters import DeadLetter
    from tests.factories import make_dead_letter, make_endpoint

    endpoint = await make_endpoint("http://127.0.0.1:9/hook")
    first = await make_dead_letter(endpoint, event_type="order.paid", last_error="HTTP 500")
    second = await make_dead_letter(endpoint, event_type="user.created", last_error=None)
    conn = connections.get("default")
    await conn.execute_script("UPDATE dead_letter SET event_type = '', last_error = NULL")

    await _migration_0009()._backfill(None, SimpleNamespace(client=conn))

    rows = await DeadLetter.all().order_by("id").values_list("id", "event_type", "last_error")
    assert rows == [(first.id, "order.paid", "HTTP 500"), (second.id, "user.created", None)]


async def test_dlq_filters_have_their_indexes(db):
    from tortoise import connections

    conn = connections.get("default")
    if conn.capabilities.dialect == "sqlite":
        rows = await conn.execute_query_dict(
            "SELECT name FROM sqlite_master WHERE type = 'index'")
        assert "idx_dead_letter_event_type" in {r["name"] for r in rows}
        return
    rows = await conn.execute_query_dict(
        "SELECT tablename AS t, indexname AS name FROM pg_indexes "
        "WHERE tablename IN ('dead_letter', 'dead_letter_search')")
    names = {(r["t"], r["name"]) for r in rows}
    assert ("dead_letter", "idx_dead_letter_event_type") in names
    columns = ("failure_reason", "endpoint_url", "last_error")
    # `q`'s indexes are on the search rows (migration 0012), none left on the entries, whose
    # status changes would rewrite them
    assert ("dead_letter_search", "uid_dead_letter_search_entry") in names
    assert not [n for t, n in names if t == "dead_letter" and n.endswith("_trgm")]
    trigram = {("dead_letter_search", f"idx_dead_letter_search_{c}_trgm") for c in columns}
    statistics = {r["name"] for r in await conn.execute_query_dict(
        "SELECT stxname AS name FROM pg_statistic_ext")}
    # pg_trgm where it could be created; else planner statistics on the searched expressions
    assert trigram <= names or {f"st_dead_letter_search_{c}" for c in columns} <= statistics


async def test_a_refused_extension_rolls_back_only_its_savepoint(db):
    """Migration 0009 falls back when pg_trgm cannot be created; the refusal must not abort
    the migration's transaction."""
    import pytest
    from tortoise import connections
    from tortoise.transactions import in_transaction

    if connections.get("default").capabilities.dialect != "postgres":
        pytest.skip("PostgreSQL extensions")
    migration = _migration_0009()
    async with in_transaction() as conn:
        assert await migration._extension(conn, "pg_trgm") is True
        assert await migration._extension(conn, "observatory_no_such_extension") is False
        assert await conn.execute_query_dict("SELECT 1 AS ok") == [{"ok": 1}]


async def test_deletes_unlink_retries_and_operations_as_set_null_did(db):
    """Migration 0013 drops three foreign keys on PostgreSQL (the walker step need not check
    them); deleting what they referenced still nulls the references, as ON DELETE SET NULL
    did (and still does on SQLite): a delivery's re-runs and the entry's link to its retry,
    an operation's deliveries."""
    from tortoise import connections

    from models.bulk import BulkOperation
    from models.dead_letters import DeadLetter
    from models.deliveries import Delivery
    from models.enums import BulkKind, DeliveryStatus
    from tests.factories import make_dead_letter, make_endpoint

    entry = await make_dead_letter(await make_endpoint("http://127.0.0.1:9/hook"))
    other = await make_dead_letter(await make_endpoint("http://127.0.0.1:9/other"))
    op = await BulkOperation.create(kind=BulkKind.RETRY, actor="alice")
    retry = await Delivery.create(message_id=entry.message_id, endpoint_id=entry.endpoint_id,  # type: ignore[attr-defined]
                                  status=DeliveryStatus.QUEUED, bulk_operation_id=op.id,
                                  retry_of_id=entry.delivery_id)  # type: ignore[attr-defined]
    again = await Delivery.create(message_id=entry.message_id, endpoint_id=entry.endpoint_id,  # type: ignore[attr-defined]
                                  status=DeliveryStatus.QUEUED, retry_of_id=retry.id)
    kept = await Delivery.create(message_id=other.message_id, endpoint_id=other.endpoint_id,  # type: ignore[attr-defined]
                                 status=DeliveryStatus.QUEUED, retry_of_id=other.delivery_id,  # type: ignore[attr-defined]
                                 bulk_operation_id=op.id)
    await DeadLetter.filter(id=entry.id).update(last_retry_delivery_id=retry.id)
    await DeadLetter.filter(id=other.id).update(last_retry_delivery_id=kept.id)

    await Delivery.filter(id=retry.id).delete()
    assert (await Delivery.get(id=again.id)).retry_of_id is None  # type: ignore[attr-defined]
    assert (await DeadLetter.get(id=entry.id)).last_retry_delivery_id is None  # type: ignore[attr-defined]
    assert (await DeadLetter.get(id=other.id)).last_retry_delivery_id == kept.id  # type: ignore[attr-defined]
    assert (await Delivery.get(id=kept.id)).retry_of_id == other.delivery_id  # type: ignore[attr-defined]

    await BulkOperation.filter(id=op.id).delete()
    assert (await Delivery.get(id=kept.id)).bulk_operation_id is None  # type: ignore[attr-defined]

    conn = connections.get("default")
    if conn.capabilities.dialect == "postgres":  # the keys the walker step no longer checks
        rows = await conn.execute_query_dict(
            "SELECT conrelid::regclass::text AS t, a.attname AS c FROM pg_constraint k "
            "JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY(k.conkey) "
            "WHERE k.contype = 'f' AND k.conrelid::regclass::text IN ('delivery', 'dead_letter')")
        keys = {(r["t"], r["c"]) for r in rows}
        assert ("delivery", "message_id") in keys and ("delivery", "endpoint_id") in keys
        assert not keys & {("delivery", "bulk_operation_id"), ("delivery", "retry_of_id"),
                           ("dead_letter", "last_retry_delivery_id")}
