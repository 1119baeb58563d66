"""PostgreSQL: three foreign keys that a Retry All step checks once per entry become plain
(indexed or not) columns, their ON DELETE SET NULL kept by statement-level triggers.

Found by bench/bulk_retry.py (issue 8, "entries handed to the fast lane per second"). A
walker step (jobs.operations.bulk_claim `_PG_STEP`, 2,000 entries in one statement) inserts one
delivery per entry and links the entry to it, which fires five foreign-key checks per entry:
each one an SPI query of the referenced row `FOR KEY SHARE` (a tuple lock: the referenced
row's header is written, and WAL-logged, unless this transaction already holds a stronger
lock). Three of them can never fail where the rows are written, and the rows they protect are
never deleted by the application:

- `delivery.bulk_operation_id` → bulk_operation: every writer (the walker step, the re-sync
  batch) holds the operation's row locked in the same statement/transaction (`FOR UPDATE`,
  or the cursor's compare-and-set UPDATE); operations are never deleted.
- `delivery.retry_of_id` → delivery: the original is the DLQ entry's own `delivery_id` (the
  entry's foreign key, ON DELETE CASCADE, and the entry row is locked by the claim that reads
  it), or, for a re-sync, a delivery of the same message, which the new delivery's kept
  `message_id` key protects (a message deleted first makes the insert fail; deleted after, it
  takes the original and the re-run together). Deliveries are only ever deleted with their
  message.
- `dead_letter.last_retry_delivery_id` → delivery: set in the statement (bulk step) or the
  transaction (single retry, re-sync) that creates that very delivery.

Kept: `delivery.message_id` (its ON DELETE CASCADE is how a message's deliveries go) and
`delivery.endpoint_id` (an endpoint deleted while a step runs: the key's lock orders the
delete's SET NULL after the step's commit, so no new delivery keeps a dangling endpoint).

Deletes stay as before: ON DELETE SET NULL is done by AFTER DELETE statement triggers (one
UPDATE per deleting statement, through the transition table: a cascade from a message runs
one DELETE per message). `delivery.retry_of_id` and `delivery.bulk_operation_id` are found
through their partial indexes (0011); `dead_letter.last_retry_delivery_id` has no index (one
would cost a B-tree entry per entry claimed, and no query looks it up): the trigger scans
dead_letter once per deleting statement, where the foreign key did so once per deleted row.

Measured here (one 2,000-entry step over 100,000 entries, in a transaction rolled back each
time, PostgreSQL backend CPU, mean of 10 runs interleaved with the keys present): 75.5 µs per
entry with the five keys, 54.5 µs without these three (48.5 µs without all five).

SQLite keeps the constraints: dropping one there means rebuilding the table, and its checks
are index probes without row locks or WAL. The models keep declaring the relations (tortoise
joins and `fetch_related` do not need the constraint).
"""

from __future__ import annotations

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.migrations.schema_editor.base import BaseSchemaEditor

#: (table, column, referenced table) of the keys this migration drops
UNCHECKED = [
    ("delivery", "bulk_operation_id", "bulk_operation"),
    ("delivery", "retry_of_id", "delivery"),
    ("dead_letter", "last_retry_delivery_id", "delivery"),
]

_DROP_KEY = """
DO $$
DECLARE name text;
BEGIN
    FOR name IN
        SELECT c.conname FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)
        WHERE c.contype = 'f' AND c.conrelid = '{table}'::regclass AND a.attname = '{column}'
    LOOP
        EXECUTE format('ALTER TABLE {table} DROP CONSTRAINT %I', name);
    END LOOP;
END $$;
"""
_ADD_KEY = ('ALTER TABLE "{table}" ADD CONSTRAINT "{table}_{column}_fkey" FOREIGN KEY '
            '("{column}") REFERENCES "{referenced}" ("id") ON DELETE SET NULL')

#: ON DELETE SET NULL of the dropped keys, once per deleting statement
_TRIGGERS = """
CREATE OR REPLACE FUNCTION delivery_deleted_unlink() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE delivery SET retry_of_id = NULL
    WHERE retry_of_id IS NOT NULL AND retry_of_id IN (SELECT id FROM gone);
    UPDATE dead_letter SET last_retry_delivery_id = NULL
    WHERE last_retry_delivery_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION bulk_operation_deleted_unlink() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE delivery SET bulk_operation_id = NULL
    WHERE bulk_operation_id IS NOT NULL AND bulk_operation_id IN (SELECT id FROM gone);
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS delivery_deleted_unlink ON delivery;
CREATE TRIGGER delivery_deleted_unlink AFTER DELETE ON delivery
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION delivery_deleted_unlink();
DROP TRIGGER IF EXISTS bulk_operation_deleted_unlink ON bulk_operation;
CREATE TRIGGER bulk_operation_deleted_unlink AFTER DELETE ON bulk_operation
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION bulk_operation_deleted_unlink();
"""
_DROP_TRIGGERS = """
DROP TRIGGER IF EXISTS delivery_deleted_unlink ON delivery;
DROP TRIGGER IF EXISTS bulk_operation_deleted_unlink ON bulk_operation;
DROP FUNCTION IF EXISTS delivery_deleted_unlink();
DROP FUNCTION IF EXISTS bulk_operation_deleted_unlink();
"""


async def _unchecked(apps: object, editor: BaseSchemaEditor) -> None:
    client = editor.client
    if client.capabilities.dialect != "postgres":
        return
    for table, column, _ in UNCHECKED:
        await client.execute_script(_DROP_KEY.format(table=table, column=column))
    await client.execute_script(_TRIGGERS)


async def _checked(apps: object, editor: BaseSchemaEditor) -> None:
    """Back to 0012: the keys again (existing rows are checked), no triggers."""
    client = editor.client
    if client.capabilities.dialect != "postgres":
        return
    await client.execute_script(_DROP_TRIGGERS)
    for table, column, referenced in UNCHECKED:
        await client.execute_script(_ADD_KEY.format(table=table, column=column,
                                                    referenced=referenced))


class Migration(migrations.Migration):
    dependencies = [('models', '0012_dead_letter_search')]

    initial = False

    operations = [ops.RunPython(_unchecked, _checked)]
