"""The dead-letter queue: deliveries that exhausted their retries or failed for good."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from models.enums import DeadLetterStatus


class DeadLetter(Model):
    id = fields.IntField(primary_key=True)
    # the failed delivery; one entry per failed delivery
    delivery: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Delivery", related_name="dead_letters", on_delete=fields.CASCADE, unique=True
    )
    message: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Message", related_name="dead_letters", on_delete=fields.CASCADE
    )
    endpoint: fields.ForeignKeyNullableRelation = fields.ForeignKeyField(
        "models.Endpoint", related_name="dead_letters", null=True, on_delete=fields.SET_NULL
    )
    endpoint_url = fields.CharField(max_length=2048)  # snapshot, kept if the endpoint goes
    status = fields.CharEnumField(DeadLetterStatus, default=DeadLetterStatus.ACTIVE, max_length=16)
    failure_reason = fields.CharField(max_length=64)
    error_history = fields.JSONField(default=list)  # one item per attempt
    attempts = fields.IntField(default=0)
    policy = fields.JSONField(default=dict)  # the retry policy in force when it failed
    metadata = fields.JSONField(default=dict)  # event type, tags, priority
    retry_count = fields.IntField(default=0)
    # the delivery of the retry in flight or last made
    last_retry_delivery: fields.ForeignKeyNullableRelation = fields.ForeignKeyField(
        "models.Delivery", related_name="retried_dead_letters", null=True,
        on_delete=fields.SET_NULL,
    )
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    resolved_at = fields.DatetimeField(null=True)

    class Meta:
        table = "dead_letter"
        indexes = (("status", "created_at"),)
