"""Applications (producers/tenants) and the endpoints that subscribe to their events."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model


class Application(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=200, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)

    endpoints: fields.ReverseRelation[Endpoint]

    class Meta:
        table = "application"


class Endpoint(Model):
    id = fields.IntField(primary_key=True)
    app: fields.ForeignKeyRelation[Application] = fields.ForeignKeyField(
        "models.Application", related_name="endpoints", on_delete=fields.CASCADE
    )
    url = fields.CharField(max_length=2048)
    description = fields.CharField(max_length=500, default="")
    secret = fields.CharField(max_length=200)  # `whsec_<base64>`; never put in job args
    # after a rotation the old secret still signs (both signatures sent) until it expires
    previous_secret = fields.CharField(max_length=200, null=True)
    previous_secret_expires_at = fields.DatetimeField(null=True)
    enabled = fields.BooleanField(default=True)
    disabled_reason = fields.CharField(max_length=200, null=True)
    # per-endpoint retry policy (see jobs.policy.RetryPolicy); null = the default policy
    retry_config = fields.JSONField(null=True)
    # event types this endpoint receives; null = every event type
    event_types = fields.JSONField(null=True)
    # db_default: what migration 0002 gives endpoints already there (the foundation never
    # followed redirects; health is tracked from the upgrade on)
    follow_redirects = fields.BooleanField(default=False, db_default=False)  # 3xx final
    max_in_flight = fields.IntField(null=True)  # per-endpoint concurrency cap; null = default
    # health: the start of the current unbroken run of failures (null while healthy)
    failing_since = fields.DatetimeField(null=True)
    consecutive_failures = fields.IntField(default=0, db_default=0)
    disabled_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "endpoint"
