"""Cron: missed-tick checkpoints, grace and timeout windows, pause records, run triggers,
drift and the arq job of each run; one run per tick and one retry per run.

Jobs registered and runs recorded before this migration already have rows, so the NOT NULL
columns carry a database default, which is also what those rows get: the default windows
(30 s grace, 300 s timeout) until the next worker start registers each job's own, and
`schedule` as the trigger of every earlier run (there was no manual run nor retry before).
(Edited in place: as first written, without the defaults, it failed on any database with a
cron job, and a failed migration is rolled back whole, so only such databases see the change.)

Before this migration a run's `scheduled_at` was its start floored to the minute, so a tick
that waited for a busy worker into the next minute shares it with that minute's own tick, and
the one-run-per-tick key could not be created. Each such later run is given its own start as
`scheduled_at` (what is known of it; no run is dropped) before the key is added.
"""

from tortoise import migrations
from tortoise.migrations import operations as ops
from models.enums import CronRunStatus
from tortoise import fields
from tortoise.indexes import Index
from tortoise.migrations.constraints import UniqueConstraint

#: runs after the first one recorded at the same (job, minute): scheduled at their own start
SEPARATE_RUNS_OF_ONE_MINUTE = (
    "UPDATE cron_run SET scheduled_at = started_at WHERE EXISTS (SELECT 1 FROM cron_run AS earlier "
    "WHERE earlier.job_id = cron_run.job_id AND earlier.scheduled_at = cron_run.scheduled_at "
    "AND earlier.id < cron_run.id)")


class Migration(migrations.Migration):
    dependencies = [('models', '0004_bulk_operations')]

    initial = False

    operations = [
        ops.AddField(
            model_name='CronJob',
            name='checked_until',
            field=fields.DatetimeField(null=True, description='the missed-tick sweep has accounted for every tick up to here (see jobs.cron_watch)', auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='CronJob',
            name='grace_s',
            field=fields.FloatField(default=30.0, db_default=30.0, description='a tick that has not started this long after its time is `missed`'),
        ),
        ops.AddField(
            model_name='CronJob',
            name='paused_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='CronJob',
            name='paused_by',
            field=fields.CharField(null=True, max_length=200),
        ),
        ops.AddField(
            model_name='CronJob',
            name='timeout_s',
            field=fields.FloatField(default=300.0, db_default=300.0, description='a run still `running` this long after it started lost its worker'),
        ),
        ops.RemoveIndex(
            model_name='CronRun',
            name=None,
            fields=['job_id', 'scheduled_at'],
        ),
        ops.AlterField(
            model_name='CronRun',
            name='scheduled_at',
            field=fields.DatetimeField(description='the tick (whole second, UTC) or, for a manual run or retry, when it was asked for', auto_now=False, auto_now_add=False),
        ),
        ops.AlterField(
            model_name='CronRun',
            name='status',
            field=fields.CharEnumField(default=CronRunStatus.PENDING, description='PENDING: pending\nRUNNING: running\nSUCCEEDED: succeeded\nFAILED: failed\nMISSED: missed', enum_type=CronRunStatus, max_length=16),
        ),
        ops.AddField(
            model_name='CronRun',
            name='actor',
            field=fields.CharField(null=True, max_length=200),
        ),
        ops.AddField(
            model_name='CronRun',
            name='arq_job_id',
            field=fields.CharField(null=True, max_length=200),
        ),
        ops.AddField(
            model_name='CronRun',
            name='drift_ms',
            field=fields.FloatField(null=True),
        ),
        ops.AddField(
            model_name='CronRun',
            name='trigger',
            field=fields.CharField(default='schedule', db_default='schedule', max_length=16),
        ),
        ops.AddIndex(
            model_name='CronRun',
            index=Index(fields=['status', 'scheduled_at']),
        ),
        ops.RunSQL(SEPARATE_RUNS_OF_ONE_MINUTE, reverse_sql=ops.RunSQL.noop),
        ops.AddConstraint(
            model_name='CronRun',
            constraint=UniqueConstraint(fields=('job', 'scheduled_at'), name=None),
        ),
        ops.AddConstraint(
            model_name='CronRun',
            constraint=UniqueConstraint(fields=('retry_of',), name=None),
        ),
    ]
