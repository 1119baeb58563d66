"""What `q` searches moves to a table of its own, `dead_letter_search` (one row per entry, the
copies of `failure_reason`, `endpoint_url` and `last_error`), with the trigram indexes of 0009
rebuilt there and dropped from `dead_letter`. Found by bench/bulk_retry.py (issue 8): a Retry
All changes each entry's status twice (active → retrying when the walker claims it, retrying →
resolved when its delivery succeeds), and a status change is never a HOT update (`status` is
indexed), so each wrote new entries into the three trigram GIN indexes too. A walker's claim
(2,000-entry steps, 120,000 entries in the table) cost PostgreSQL 178 µs of CPU per entry with
them and 112 µs without. The search row is written once, when the entry is inserted, and again
only if a searched column changes (a failed retry's `failure_reason`).

On PostgreSQL the database keeps it: triggers insert the row with its entry however the entry
is written (ORM, raw SQL, COPY) and copy the columns when one of them changes; the foreign key
deletes it with its entry. Existing entries are copied here. SQLite has no trigram indexes, so
its `q` keeps searching the entries' own columns and the table stays empty there (triggers
would also add their rows to what tortoise counts as deleted or updated: it reads SQLite's
`total_changes`).
"""

from __future__ import annotations

import importlib

from tortoise import fields, migrations
from tortoise.fields.base import OnDelete
from tortoise.migrations import operations as ops
from tortoise.migrations.schema_editor.base import BaseSchemaEditor

_0009 = importlib.import_module("models.migrations.0009_dead_letter_copies")

#: the functions find `dead_letter_search` in the schema they were created in, whatever the
#: search path of the session writing the entry
_PG_TRIGGERS = """
CREATE OR REPLACE FUNCTION dead_letter_search_insert() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO dead_letter_search (entry_id, failure_reason, endpoint_url, last_error)
    SELECT id, failure_reason, endpoint_url, last_error FROM new_entries;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION dead_letter_search_update() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE dead_letter_search SET failure_reason = NEW.failure_reason,
           endpoint_url = NEW.endpoint_url, last_error = NEW.last_error
    WHERE entry_id = NEW.id;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS dead_letter_search_insert ON dead_letter;
CREATE TRIGGER dead_letter_search_insert AFTER INSERT ON dead_letter
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION dead_letter_search_insert();
DROP TRIGGER IF EXISTS dead_letter_search_update ON dead_letter;
CREATE TRIGGER dead_letter_search_update
    AFTER UPDATE OF failure_reason, endpoint_url, last_error ON dead_letter FOR EACH ROW
    WHEN (OLD.failure_reason IS DISTINCT FROM NEW.failure_reason
          OR OLD.endpoint_url IS DISTINCT FROM NEW.endpoint_url
          OR OLD.last_error IS DISTINCT FROM NEW.last_error)
    EXECUTE FUNCTION dead_letter_search_update();
"""
_PG_DROP_TRIGGERS = """
DROP TRIGGER IF EXISTS dead_letter_search_insert ON dead_letter;
DROP TRIGGER IF EXISTS dead_letter_search_update ON dead_letter;
DROP FUNCTION IF EXISTS dead_letter_search_insert();
DROP FUNCTION IF EXISTS dead_letter_search_update();
"""
_BACKFILL = (
    "INSERT INTO dead_letter_search (entry_id, failure_reason, endpoint_url, last_error) "
    "SELECT id, failure_reason, endpoint_url, last_error FROM dead_letter ORDER BY id")


async def _search_table(apps: object, editor: BaseSchemaEditor) -> None:
    """PostgreSQL: copy the existing entries, install the triggers, move the search indexes.
    SQLite searches the entries' own columns (no trigram indexes there, so nothing to spare
    its status changes) and leaves the table empty."""
    client = editor.client
    if client.capabilities.dialect != "postgres":
        return
    await client.execute_script(_BACKFILL)
    # the join from an entry to its row (tortoise 1.1 does not create a one-to-one field's
    # unique key, see 0008); one row per entry
    await client.execute_script('CREATE UNIQUE INDEX IF NOT EXISTS "uid_dead_letter_search_entry" '
                                'ON "dead_letter_search" (entry_id)')
    await client.execute_script(_PG_TRIGGERS)
    await _0009._drop_search_indexes(apps, editor)  # off dead_letter: its status changes
    if await _0009._extension(client, "pg_trgm"):
        for column, expression in _0009.SEARCHED.items():
            await client.execute_script(
                f'CREATE INDEX IF NOT EXISTS "idx_dead_letter_search_{column}_trgm" '
                f"ON dead_letter_search USING gin (({expression}) gin_trgm_ops)")
    else:
        version = (await client.execute_query_dict("SHOW server_version_num"))[0]
        if int(version["server_version_num"]) >= 140000:
            for column, expression in _0009.SEARCHED.items():
                await client.execute_script(
                    f'CREATE STATISTICS IF NOT EXISTS "st_dead_letter_search_{column}" '
                    f"ON ({expression}) FROM dead_letter_search")
    await client.execute_script("ANALYZE dead_letter_search")


async def _drop_search_table(apps: object, editor: BaseSchemaEditor) -> None:
    """Back to 0011: no triggers, the search indexes on dead_letter again (the table itself
    is dropped by the reverse of CreateModel)."""
    if editor.client.capabilities.dialect != "postgres":
        return
    await editor.client.execute_script(_PG_DROP_TRIGGERS)
    await _0009._search_indexes(apps, editor)


class Migration(migrations.Migration):
    dependencies = [('models', '0011_delivery_partial_indexes')]

    initial = False

    operations = [
        ops.CreateModel(
            name='DeadLetterSearch',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('entry', fields.OneToOneField('models.DeadLetter', source_field='entry_id', db_constraint=True, to_field='id', related_name='search', on_delete=OnDelete.CASCADE)),
                ('failure_reason', fields.CharField(max_length=64)),
                ('endpoint_url', fields.CharField(max_length=2048)),
                ('last_error', fields.TextField(null=True, unique=False)),
            ],
            options={'table': 'dead_letter_search', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.RunPython(_search_table, _drop_search_table),
    ]
