"""Endpoint secret rotation, opt-in redirects, in-flight cap and health.

Endpoints created before this migration already have rows, so the NOT NULL columns carry a
database default, which is also what those rows get: redirects not followed (the foundation
never followed them) and no failures counted (health is tracked from the upgrade on; an
upgrade alone never disables an endpoint). (Edited in place: as first written, without the
defaults, it failed on any database with an endpoint, and a failed migration is rolled back
whole, so only such databases see the change.)
"""

from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0001_initial')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Endpoint',
            name='consecutive_failures',
            field=fields.IntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name='Endpoint',
            name='disabled_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Endpoint',
            name='failing_since',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Endpoint',
            name='follow_redirects',
            field=fields.BooleanField(default=False, db_default=False),
        ),
        ops.AddField(
            model_name='Endpoint',
            name='max_in_flight',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Endpoint',
            name='previous_secret',
            field=fields.CharField(null=True, max_length=200),
        ),
        ops.AddField(
            model_name='Endpoint',
            name='previous_secret_expires_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
    ]
