"""Cron jobs run by the worker and the record of each run."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from models.enums import CronRunStatus


class CronJob(Model):
    name = fields.CharField(max_length=100, primary_key=True)
    expression = fields.CharField(max_length=100)  # cron expression (croniter syntax)
    description = fields.CharField(max_length=500, default="")
    paused = fields.BooleanField(default=False)
    last_run_at = fields.DatetimeField(null=True)
    next_run_at = fields.DatetimeField(null=True)
    updated_at = fields.DatetimeField(auto_now=True)

    runs: fields.ReverseRelation[CronRun]

    class Meta:
        table = "cron_job"


class CronRun(Model):
    id = fields.IntField(primary_key=True)
    job: fields.ForeignKeyRelation[CronJob] = fields.ForeignKeyField(
        "models.CronJob", related_name="runs", on_delete=fields.CASCADE
    )
    status = fields.CharEnumField(CronRunStatus, default=CronRunStatus.PENDING, max_length=16)
    scheduled_at = fields.DatetimeField()
    started_at = fields.DatetimeField(null=True)
    finished_at = fields.DatetimeField(null=True)
    duration_ms = fields.FloatField(null=True)
    error = fields.TextField(null=True)
    retry_of: fields.ForeignKeyNullableRelation[CronRun] = fields.ForeignKeyField(
        "models.CronRun", related_name="retries", null=True, on_delete=fields.SET_NULL
    )

    class Meta:
        table = "cron_run"
        indexes = (("job_id", "scheduled_at"),)
