"""Indexes the models declare but tortoise 1.1's migrations never created (`db_index=True` on
a field, `unique=True` on a foreign key), and those the hot queries need. Found by
bench/bulk_retry.py and bench/dlq_queries.py: without `claim_token` every batch's read-back
scanned the whole delivery table.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops

# (name, table, columns, unique) — the same SQL on SQLite and PostgreSQL
INDEXES = [
    ("idx_delivery_claim_token", "delivery", "claim_token", False),
    ("idx_delivery_claimed_by", "delivery", "claimed_by", False),
    ("idx_delivery_bulk_operation", "delivery", "bulk_operation_id", False),
    ("idx_delivery_endpoint", "delivery", "endpoint_id, id", False),
    ("idx_delivery_message", "delivery", "message_id", False),
    ("idx_delivery_retry_of", "delivery", "retry_of_id", False),
    ("idx_attempt_delivery", "attempt", "delivery_id, number", False),
    ("uid_dead_letter_delivery", "dead_letter", "delivery_id", True),  # one entry per delivery
    ("idx_dead_letter_endpoint", "dead_letter", "endpoint_id, id", False),
    ("idx_dead_letter_message", "dead_letter", "message_id", False),
    ("idx_dead_letter_created", "dead_letter", "created_at", False),
]


class Migration(migrations.Migration):
    dependencies = [('models', '0007_fleet')]

    initial = False

    operations = [
        ops.RunSQL(
            f'CREATE {"UNIQUE " if unique else ""}INDEX IF NOT EXISTS "{name}" '
            f'ON "{table}" ({", ".join(f"{c.strip()!s}" for c in columns.split(","))})',
            reverse_sql=f'DROP INDEX IF EXISTS "{name}"')
        for name, table, columns, unique in INDEXES
    ]
