"""Workers and external agents with their heartbeats, and scaling signals about the fleet."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from models.enums import AgentStatus


class Agent(Model):
    id = fields.CharField(max_length=200, primary_key=True)  # e.g. `worker@host:pid`
    kind = fields.CharField(max_length=32, default="worker")
    host = fields.CharField(max_length=200, default="")
    pid = fields.IntField(null=True)
    status = fields.CharEnumField(AgentStatus, default=AgentStatus.ALIVE, max_length=16)
    started_at = fields.DatetimeField(auto_now_add=True)
    last_seen = fields.DatetimeField()
    metadata = fields.JSONField(default=dict)

    class Meta:
        table = "agent"


class ScalingEvent(Model):
    id = fields.IntField(primary_key=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    direction = fields.CharField(max_length=8)  # up | down
    reason = fields.CharField(max_length=500)
    queue_depth = fields.IntField(default=0)
    oldest_age_s = fields.FloatField(default=0)
    workers = fields.IntField(default=0)
    suggested_workers = fields.IntField(default=0)

    class Meta:
        table = "scaling_event"
