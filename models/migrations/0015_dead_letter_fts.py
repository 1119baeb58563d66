"""SQLite: a trigram index of what `q` searches, `dead_letter_fts` (FTS5, one row per entry,
rowid = the entry's id), so that a search matching few entries is looked up instead of read
off every entry (bench.dlq_queries, 1,000,000 entries: `GET /v1/dlq?q=<a term no entry has>`
took 640–960 ms scanning them all). PostgreSQL has its trigram indexes (0012): nothing here.

SQLite keeps it: a trigger indexes each entry inserted (however it is written) and re-indexes
it when a searched column changes. Deleted entries leave it later, when the daily retention
job prunes it (models.dlq_filter.prune_search_index), not by a trigger: that would add the
index's own writes to what tortoise reports as deleted (it reads SQLite's `total_changes`, see
0012). A stale row is harmless meanwhile: the index only narrows a search to the entries it
names, which are then read and matched as before (models.dlq_filter).
"""

from __future__ import annotations

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.migrations.schema_editor.base import BaseSchemaEditor

_SQLITE = """
CREATE VIRTUAL TABLE IF NOT EXISTS dead_letter_fts USING fts5(
    failure_reason, endpoint_url, last_error, tokenize = 'trigram');
CREATE TRIGGER IF NOT EXISTS dead_letter_fts_insert AFTER INSERT ON dead_letter BEGIN
    INSERT OR REPLACE INTO dead_letter_fts (rowid, failure_reason, endpoint_url, last_error)
    VALUES (NEW.id, NEW.failure_reason, NEW.endpoint_url, NEW.last_error);
END;
CREATE TRIGGER IF NOT EXISTS dead_letter_fts_update
AFTER UPDATE OF failure_reason, endpoint_url, last_error ON dead_letter
WHEN OLD.failure_reason IS NOT NEW.failure_reason OR OLD.endpoint_url IS NOT NEW.endpoint_url
     OR OLD.last_error IS NOT NEW.last_error
BEGIN
    INSERT OR REPLACE INTO dead_letter_fts (rowid, failure_reason, endpoint_url, last_error)
    VALUES (NEW.id, NEW.failure_reason, NEW.endpoint_url, NEW.last_error);
END;
INSERT OR REPLACE INTO dead_letter_fts (rowid, failure_reason, endpoint_url, last_error)
SELECT id, failure_reason, endpoint_url, last_error FROM dead_letter;
"""
_SQLITE_DROP = """
DROP TRIGGER IF EXISTS dead_letter_fts_insert;
DROP TRIGGER IF EXISTS dead_letter_fts_update;
DROP TABLE IF EXISTS dead_letter_fts;
"""


async def _create(apps: object, editor: BaseSchemaEditor) -> None:
    if editor.client.capabilities.dialect == "sqlite":
        await editor.client.execute_script(_SQLITE)


async def _drop(apps: object, editor: BaseSchemaEditor) -> None:
    if editor.client.capabilities.dialect == "sqlite":
        await editor.client.execute_script(_SQLITE_DROP)


class Migration(migrations.Migration):
    dependencies = [('models', '0014_bulk_claimed_by_jobs')]

    initial = False

    operations = [ops.RunPython(_create, _drop)]
