"""Retry All: the bulk lane's jobs claim the entries the walker handed them (issue 8, "entries
handed to the fast lane per second"), so the operation row counts what they settled.

`claimed`       entries the jobs turned into deliveries
`late_skipped`  entries handed out but changed before their job ran (retried or archived by
                someone else, their endpoint disabled, deleted): counted `skipped`

A cancel counts the rest of what was handed out (`handed - claimed - late_skipped`) as
`cancelled`: the jobs' claims and the cancel lock the operation's row, so none claims after it.
"""

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


class Migration(migrations.Migration):
    dependencies = [('models', '0013_retry_links_unchecked')]

    initial = False

    operations = [
        ops.AddField(model_name='BulkOperation', name='claimed',
                     field=fields.IntField(default=0)),
        ops.AddField(model_name='BulkOperation', name='late_skipped',
                     field=fields.IntField(default=0)),
    ]
