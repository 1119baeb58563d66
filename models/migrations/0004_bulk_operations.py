from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from models.enums import BulkState
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0003_delivery_claim_token')]

    initial = False

    operations = [
        ops.AlterField(
            model_name='BulkOperation',
            name='state',
            field=fields.CharEnumField(default=BulkState.RUNNING, description='RUNNING: running\nPAUSED: paused\nHALTED: halted\nCANCELLING: cancelling\nCANCELLED: cancelled\nCOMPLETED: completed\nFAILED: failed', enum_type=BulkState, max_length=16),
        ),
        ops.AddField(
            model_name='BulkOperation',
            name='canary',
            field=fields.JSONField(null=True, encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads),
        ),
        ops.AddField(
            model_name='BulkOperation',
            name='canary_passed',
            field=fields.BooleanField(default=False),
        ),
        ops.AddField(
            model_name='BulkOperation',
            name='cursor',
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name='BulkOperation',
            name='halted_reason',
            field=fields.CharField(null=True, max_length=500),
        ),
        ops.AddField(
            model_name='BulkOperation',
            name='handed',
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name='BulkOperation',
            name='skipped',
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name='BulkOperation',
            name='walked_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
    ]
