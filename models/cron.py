"""Cron jobs run by the worker and the record of each run (one row per tick, at most)."""

from __future__ import annotations

from tortoise import fields
from tortoise.models import Model

from models.enums import CronRunStatus

# How a run came about: its scheduled tick, an operator's "run now", or a retry of a run.
TRIGGER_SCHEDULE = "schedule"
TRIGGER_MANUAL = "manual"
TRIGGER_RETRY = "retry"


class CronJob(Model):
    name = fields.CharField(max_length=100, primary_key=True)
    expression = fields.CharField(max_length=100)  # cron expression (croniter, UTC; 6th = seconds)
    description = fields.CharField(max_length=500, default="")
    # db_default: what migration 0006 gives jobs already there, until the next worker start
    # registers each job's own windows
    #: a tick that has not started this long after its time is `missed`
    grace_s = fields.FloatField(default=30.0, db_default=30.0)
    #: a run still `running` this long after it started lost its worker
    timeout_s = fields.FloatField(default=300.0, db_default=300.0)
    paused = fields.BooleanField(default=False)
    paused_at = fields.DatetimeField(null=True)
    paused_by = fields.CharField(max_length=200, null=True)
    last_run_at = fields.DatetimeField(null=True)
    next_run_at = fields.DatetimeField(null=True)
    #: the missed-tick sweep has accounted for every tick up to here (see jobs.cron_watch)
    checked_until = fields.DatetimeField(null=True)
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
    # schedule|manual|retry; db_default: runs recorded before migration 0006 were all ticks
    trigger = fields.CharField(max_length=16, default=TRIGGER_SCHEDULE,
                               db_default=TRIGGER_SCHEDULE)
    #: the tick (whole second, UTC) or, for a manual run or retry, when it was asked for
    scheduled_at = fields.DatetimeField()
    started_at = fields.DatetimeField(null=True)
    finished_at = fields.DatetimeField(null=True)
    duration_ms = fields.FloatField(null=True)
    drift_ms = fields.FloatField(null=True)  # started_at - scheduled_at
    error = fields.TextField(null=True)  # a failure's error, or why a tick was missed
    arq_job_id = fields.CharField(max_length=200, null=True)  # the arq job that ran it
    actor = fields.CharField(max_length=200, null=True)  # who asked (manual run, retry)
    retry_of: fields.ForeignKeyNullableRelation[CronRun] = fields.ForeignKeyField(
        "models.CronRun", related_name="retries", null=True, on_delete=fields.SET_NULL
    )

    class Meta:
        table = "cron_run"
        # One row per tick even when several workers race to record it, and at most one
        # retry per failed run (a retry that fails is retried in turn): both are CAS points.
        unique_together = (("job", "scheduled_at"), ("retry_of",))
        indexes = (("status", "scheduled_at"),)
