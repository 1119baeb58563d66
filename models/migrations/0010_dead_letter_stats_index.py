"""The DLQ statistics (jobs/operations/dlq_stats.py) count the entries per (status, event type,
endpoint) with their oldest and newest `created_at` in one pass: this index holds exactly those
columns, in that order, so on PostgreSQL the pass is an index-only scan (47 MB at 1,000,000
entries, against 372 MB of table) already sorted for the grouping, and on SQLite a covering
index scan. Found by bench/dlq_queries.py with 1,000,000 entries (issue 8: `GET /v1/dlq/stats`
p95 under 500 ms).

Its write cost is small: `status` is already indexed, so a status change (a retry, Retry All,
archive) never was a HOT update and already writes every index of the row; this adds one
B-tree entry to about ten (a 100,000-entry status UPDATE on PostgreSQL took the same time with
and without it, within the noise of a few per cent). Creating it on an existing 1,000,000-entry
table takes about 3 s on PostgreSQL, during which DLQ writes wait. Status changes grow it (126
MB after two 250,000-entry status changes and a VACUUM): the stats statement lowers
random_page_cost for itself so that the planner still reads it rather than the table.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [('models', '0009_dead_letter_copies')]

    initial = False

    operations = [
        ops.RunSQL(
            'CREATE INDEX IF NOT EXISTS "idx_dead_letter_stats" '
            'ON "dead_letter" (status, event_type, endpoint_id, created_at)',
            reverse_sql='DROP INDEX IF EXISTS "idx_dead_letter_stats"'),
    ]
