"""The fleet's figures on `agent` (queue, version, running job count and totals, clean exit and
zombie times), `delivery.claimed_by`, and the hooks' answers on `scaling_event`.

Workers registered before this migration already have rows, so the NOT NULL columns carry a
database default, which is also what those rows get: nothing reported yet (no queue, no
version, zero figures) until the worker's next start registers it afresh. A clean exit before
it was recorded as status `stopped` at its last beat; that beat is its `stopped_at`.
`scaling_event.hooks` needs no default: nothing wrote scaling events before this migration.
(Edited in place: as first written, without the defaults, it failed on any database with an
agent row, and a failed migration is rolled back whole, so only such databases see the change.)
"""

from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from models.enums import AgentStatus
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0006_cron')]

    initial = False

    operations = [
        ops.AlterField(
            model_name='Agent',
            name='status',
            field=fields.CharEnumField(default=AgentStatus.ALIVE, description='ALIVE: alive\nSTOPPED: stopped\nZOMBIE: zombie', enum_type=AgentStatus, max_length=16),
        ),
        ops.AddField(
            model_name='Agent',
            name='failed',
            field=fields.IntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='Agent',
            name='jobs_done',
            field=fields.IntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='Agent',
            name='queue',
            field=fields.CharField(default='', db_default='', max_length=200),
        ),
        ops.AddField(
            model_name='Agent',
            name='running',
            field=fields.IntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='Agent',
            name='stopped_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Agent',
            name='succeeded',
            field=fields.IntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='Agent',
            name='version',
            field=fields.CharField(default='', db_default='', max_length=64),
        ),
        ops.AddField(
            model_name='Agent',
            name='zombie_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.RunSQL("UPDATE agent SET stopped_at = last_seen WHERE status = 'stopped'",
                   reverse_sql=ops.RunSQL.noop),
        ops.AddField(
            model_name='Delivery',
            name='claimed_by',
            field=fields.CharField(null=True, max_length=200),
        ),
        ops.AlterField(
            model_name='ScalingEvent',
            name='direction',
            field=fields.CharField(max_length=16),
        ),
        ops.AddField(
            model_name='ScalingEvent',
            name='hooks',
            field=fields.JSONField(default=dict, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads),
        ),
    ]
