"""Bulk operations (retry all, re-sync, archive, delete) and their final figures."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from models.enums import BulkKind, BulkState


# Live figures are in the Redis hash (jobs.operations.bulk); the row holds what a restart needs
# (state, the walker's cursor and figures) and, once finished, the final figures.
class BulkOperation(Model):
    id = fields.IntField(primary_key=True)
    kind = fields.CharEnumField(BulkKind, max_length=16)
    scope = fields.JSONField(default=dict)  # the frozen filter the operator confirmed
    state = fields.CharEnumField(BulkState, default=BulkState.RUNNING, max_length=16)
    reason = fields.CharField(max_length=500, null=True)
    actor = fields.CharField(max_length=200)
    cancelled = fields.BooleanField(default=False)
    total = fields.IntField(default=0)
    completed = fields.IntField(default=0)
    succeeded = fields.IntField(default=0)
    failed = fields.IntField(default=0)
    cancelled_count = fields.IntField(default=0)
    skipped = fields.IntField(default=0)  # entries left alone (no longer active, endpoint off)
    handed = fields.IntField(default=0)  # entries (retry) or deliveries (re-sync) handed out
    claimed = fields.IntField(default=0)  # retry: entries the bulk lane's jobs claimed
    late_skipped = fields.IntField(default=0)  # retry: handed out, changed before their job ran
    cursor = fields.IntField(default=0)  # the highest entry id the walker has passed
    canary = fields.JSONField(null=True)  # {"count": N, "max_failure_pct": X}
    canary_passed = fields.BooleanField(default=False)
    halted_reason = fields.CharField(max_length=500, null=True)
    walked_at = fields.DatetimeField(null=True)  # the walker reached the end of the scope
    started_at = fields.DatetimeField(auto_now_add=True)
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "bulk_operation"
