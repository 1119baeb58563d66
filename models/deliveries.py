"""Messages, their deliveries to endpoints (the job execution log) and each HTTP attempt."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from models.enums import DeliveryStatus


class Message(Model):
    id = fields.IntField(primary_key=True)
    app: fields.ForeignKeyRelation = fields.ForeignKeyField(
        "models.Application", related_name="messages", on_delete=fields.CASCADE
    )
    event_type = fields.CharField(max_length=200)
    payload = fields.JSONField()
    idempotency_key = fields.CharField(max_length=200, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "message"
        unique_together = (("app", "idempotency_key"),)


class Delivery(Model):
    id = fields.IntField(primary_key=True)
    message: fields.ForeignKeyRelation[Message] = fields.ForeignKeyField(
        "models.Message", related_name="deliveries", on_delete=fields.CASCADE
    )
    # null once the endpoint is deleted; a retry then refuses ("configuration gone")
    endpoint: fields.ForeignKeyNullableRelation = fields.ForeignKeyField(
        "models.Endpoint", related_name="deliveries", null=True, on_delete=fields.SET_NULL
    )
    status = fields.CharEnumField(DeliveryStatus, default=DeliveryStatus.QUEUED, max_length=16)
    attempts = fields.IntField(default=0)  # tries made so far
    next_attempt_at = fields.DatetimeField(null=True)
    last_error = fields.TextField(null=True)
    last_status_code = fields.IntField(null=True)
    # the delivery this one re-runs (manual retry); the original keeps its own status.
    # On PostgreSQL no foreign key checks it (migration 0013: its writers guarantee it, a
    # trigger does the ON DELETE SET NULL); the same for bulk_operation below
    retry_of: fields.ForeignKeyNullableRelation[Delivery] = fields.ForeignKeyField(
        "models.Delivery", related_name="retries", null=True, on_delete=fields.SET_NULL
    )
    bulk_operation: fields.ForeignKeyNullableRelation = fields.ForeignKeyField(
        "models.BulkOperation", related_name="deliveries", null=True, on_delete=fields.SET_NULL
    )
    metadata = fields.JSONField(default=dict)
    # set by the batch that claimed it (compare-and-set), so the claimer can read its rows back
    # indexed for the bulk lane only (partial, migration 0011): the fast lane never looks it up
    claim_token = fields.CharField(max_length=36, null=True, db_index=True)
    # the agent (worker id) that claimed it: the zombie sweep hands back what a dead one held
    claimed_by = fields.CharField(max_length=200, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)
    finished_at = fields.DatetimeField(null=True)

    attempt_rows: fields.ReverseRelation[Attempt]

    class Meta:
        table = "delivery"
        indexes = (("status", "next_attempt_at"),)


class Attempt(Model):
    id = fields.IntField(primary_key=True)
    delivery: fields.ForeignKeyRelation[Delivery] = fields.ForeignKeyField(
        "models.Delivery", related_name="attempt_rows", on_delete=fields.CASCADE
    )
    number = fields.IntField()  # 1-based try number within its delivery
    started_at = fields.DatetimeField()
    duration_ms = fields.FloatField()
    status_code = fields.IntField(null=True)
    outcome = fields.CharField(max_length=16)  # success | retryable | final
    error_class = fields.CharField(max_length=64, null=True)  # stable failure reason code
    error_message = fields.TextField(null=True)
    response_excerpt = fields.TextField(null=True)  # bounded (jobs.attempt.EXCERPT_BYTES)

    class Meta:
        table = "attempt"
