"""Four of delivery's indexes become partial: they hold only the rows their queries look for.

A delivery row is written three times on the fast lane (created queued, claimed running,
finished), and none of those UPDATEs can be HOT (`status` is indexed), so each writes an
entry into every index of the table. Four of those indexes serve rare lookups of a few rows:

- `bulk_operation_id` (a bulk operation's deliveries) and `retry_of_id` (the re-runs of a
  delivery, and the FK's ON DELETE SET NULL) are NULL on every live delivery;
- `claimed_by` is only looked up among `running` deliveries (the zombie sweep and the stale
  recovery, jobs.fleet / jobs.deliver.recover_stale_running);
- `claim_token` is only looked up by the bulk lane, to read back the deliveries it just created
  or cancelled (every such query names the operation); the fast lane's claim sets it on every
  delivery but never looks it up.

Partial, they take no entry for the rows they never serve: 11 index entries fewer per live
delivery out of 24 (bench/deliveries.py prints PostgreSQL's CPU per delivery). Every query
on these columns states a predicate that implies the index's own (`x = ...` implies
`x IS NOT NULL`; the claimed_by lookups all say `status = 'running'`), so both PostgreSQL's and
SQLite's planners still use them.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops

# (name, columns, predicate): the same SQL on SQLite and PostgreSQL
PARTIAL = [
    ("idx_delivery_bulk_operation", "bulk_operation_id", "bulk_operation_id IS NOT NULL"),
    ("idx_delivery_retry_of", "retry_of_id", "retry_of_id IS NOT NULL"),
    ("idx_delivery_claimed_by", "claimed_by", "status = 'running'"),
    ("idx_delivery_claim_token", "claim_token", "bulk_operation_id IS NOT NULL"),
]


def _create(name: str, columns: str, predicate: str | None) -> str:
    where = f" WHERE {predicate}" if predicate else ""
    return f'CREATE INDEX IF NOT EXISTS "{name}" ON "delivery" ({columns}){where}'


class Migration(migrations.Migration):
    dependencies = [('models', '0010_dead_letter_stats_index')]

    initial = False

    operations = [
        op
        for name, columns, predicate in PARTIAL
        for op in (
            ops.RunSQL(f'DROP INDEX IF EXISTS "{name}"', reverse_sql=_create(name, columns, None)),
            ops.RunSQL(_create(name, columns, predicate),
                       reverse_sql=f'DROP INDEX IF EXISTS "{name}"'),
        )
    ]
