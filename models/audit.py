"""The append-only audit log of operator actions."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class AuditLog(Model):
    id = fields.IntField(primary_key=True)
    actor = fields.CharField(max_length=200)  # user name (or `system`)
    action = fields.CharField(max_length=100)  # e.g. `dlq.retry`
    target_type = fields.CharField(max_length=50)
    target_id = fields.CharField(max_length=100)
    details = fields.JSONField(default=dict)  # e.g. original and new delivery ids
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "audit_log"
        indexes = (("created_at",),)
