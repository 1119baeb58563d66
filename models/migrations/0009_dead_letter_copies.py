"""The DLQ reads one table: `dead_letter.event_type` and `dead_letter.last_error` copy the
message's event type and the failed delivery's last error (backfilled here), so the `event_type`
filter, the stats' group-by and the `q` search no longer join `message` and `delivery`. Found by
bench/dlq_queries.py with 1,000,000 entries (issue 8).

Indexes: `(event_type, id)` for the filter (newest first) and the group-by. On PostgreSQL, `q`
(`UPPER(CAST(col AS VARCHAR)) LIKE '%…%'`, tortoise's icontains) gets trigram GIN indexes on the
three searched expressions when the `pg_trgm` extension can be created: a rare term is then
found through the indexes instead of a scan, and ANALYZE keeps statistics on the expressions, so
the planner knows how common a term is. Without the extension (no privilege), extended
statistics on the same expressions (PostgreSQL 14+) still give the planner those estimates.
"""

from __future__ import annotations

import logging
from typing import Any

from tortoise import fields, migrations
from tortoise.migrations import operations as ops
from tortoise.migrations.schema_editor.base import BaseSchemaEditor

log = logging.getLogger("observatory.migrations")

#: the expressions tortoise's `icontains` compares, one per column `q` searches
SEARCHED = {"failure_reason": "UPPER(CAST(failure_reason AS VARCHAR))",
            "endpoint_url": "UPPER(CAST(endpoint_url AS VARCHAR))",
            "last_error": "UPPER(CAST(last_error AS VARCHAR))"}

BACKFILL = {
    "postgres": (
        "UPDATE dead_letter SET event_type = m.event_type, last_error = d.last_error "
        "FROM message m, delivery d WHERE m.id = dead_letter.message_id "
        "AND d.id = dead_letter.delivery_id"),
    "sqlite": (
        "UPDATE dead_letter SET "
        "event_type = (SELECT event_type FROM message WHERE message.id = dead_letter.message_id), "
        "last_error = (SELECT last_error FROM delivery "
        "WHERE delivery.id = dead_letter.delivery_id)"),
}


async def _backfill(apps: object, editor: BaseSchemaEditor) -> None:
    dialect = editor.client.capabilities.dialect
    await editor.client.execute_script(BACKFILL.get(dialect, BACKFILL["sqlite"]))


async def _search_indexes(apps: object, editor: BaseSchemaEditor) -> None:
    """PostgreSQL only: trigram indexes for `q`, or the planner statistics as a fallback."""
    client = editor.client
    if client.capabilities.dialect != "postgres":
        return
    if await _extension(client, "pg_trgm"):
        for column, expression in SEARCHED.items():
            await client.execute_script(
                f'CREATE INDEX IF NOT EXISTS "idx_dead_letter_{column}_trgm" ON dead_letter '
                f"USING gin (({expression}) gin_trgm_ops)")
    else:
        version = (await client.execute_query_dict("SHOW server_version_num"))[0]
        if int(version["server_version_num"]) >= 140000:
            for column, expression in SEARCHED.items():
                await client.execute_script(
                    f'CREATE STATISTICS IF NOT EXISTS "st_dead_letter_{column}" '
                    f"ON ({expression}) FROM dead_letter")
    await client.execute_script("ANALYZE dead_letter")  # the backfill and the new statistics


async def _extension(client: Any, name: str) -> bool:
    """Whether extension `name` is installed, creating it if this role may; a refusal rolls
    back only its own savepoint, and the migration's transaction goes on."""
    if await client.execute_query_dict("SELECT 1 FROM pg_extension WHERE extname = $1", [name]):
        return True
    await client.execute_script("SAVEPOINT observatory_extension")
    try:
        await client.execute_script(f'CREATE EXTENSION IF NOT EXISTS "{name}"')
    except Exception as exc:  # noqa: BLE001 — not available or not allowed: fall back
        await client.execute_script("ROLLBACK TO SAVEPOINT observatory_extension")
        log.warning("extension %s unavailable (%s): DLQ text search runs without trigram "
                    "indexes", name, exc)
        return False
    await client.execute_script("RELEASE SAVEPOINT observatory_extension")
    return True


async def _drop_search_indexes(apps: object, editor: BaseSchemaEditor) -> None:
    if editor.client.capabilities.dialect != "postgres":
        return
    for column in SEARCHED:
        await editor.client.execute_script(
            f'DROP INDEX IF EXISTS "idx_dead_letter_{column}_trgm"; '
            f'DROP STATISTICS IF EXISTS "st_dead_letter_{column}"')


class Migration(migrations.Migration):
    dependencies = [('models', '0008_indexes')]

    initial = False

    operations = [
        ops.AddField(
            model_name='DeadLetter',
            name='event_type',
            field=fields.CharField(default='', db_default='', description='copy of message.event_type, so the DLQ filters and stats need no join', max_length=200),
        ),
        ops.AddField(
            model_name='DeadLetter',
            name='last_error',
            field=fields.TextField(null=True, description="copy of the failed delivery's last_error (what `q` searches), so the DLQ needs no join", unique=False),
        ),
        ops.RunPython(_backfill, ops.RunPython.noop),
        ops.RunSQL(
            'CREATE INDEX IF NOT EXISTS "idx_dead_letter_event_type" '
            'ON "dead_letter" (event_type, id)',
            reverse_sql='DROP INDEX IF EXISTS "idx_dead_letter_event_type"'),
        ops.RunPython(_search_indexes, _drop_search_indexes),
    ]
