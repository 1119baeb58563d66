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
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name='Agent',
            name='jobs_done',
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name='Agent',
            name='queue',
            field=fields.CharField(default='', max_length=200),
        ),
        ops.AddField(
            model_name='Agent',
            name='running',
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name='Agent',
            name='stopped_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Agent',
            name='succeeded',
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name='Agent',
            name='version',
            field=fields.CharField(default='', max_length=64),
        ),
        ops.AddField(
            model_name='Agent',
            name='zombie_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
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
