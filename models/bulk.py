"""Bulk operations (retry all, re-sync, archive, delete) and their final figures."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from models.enums import BulkKind, BulkState


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
    started_at = fields.DatetimeField(auto_now_add=True)
    finished_at = fields.DatetimeField(null=True)

    class Meta:
        table = "bulk_operation"
