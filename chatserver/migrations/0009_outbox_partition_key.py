"""Relays partitioned by chat: every outbox row (and dead letter) says which partition
sends it (`partition_key`, see `chatserver.outbox.partition_key`).

A database default of 0 too: rows inserted by hand (an operator's SQL, the tests') go to
partition 0. Rows already queued get their key from the same rule, frozen here (a migration must not
follow later changes of the code): else a chat's old rows would all be partition 0's and
its new ones another's, out of order while the backlog drains. No index: the relay reads
`WHERE partition_key % N = k ORDER BY id LIMIT n` along the primary key, its rows being
spread through the table (measured in the README, "Relays partitioned by chat").
"""

import json

from django.db import migrations, models


def key_of(row) -> int:
    chat = None
    if row.payload:
        try:
            chat = json.loads(row.payload).get("chat")
        except (ValueError, AttributeError):
            chat = None
    if isinstance(chat, int):
        return chat
    access = row.access if isinstance(row.access, list) else []
    for op in access:
        if isinstance(op, dict) and isinstance(op.get("chat"), int):
            return op["chat"]
    for op in access:
        if isinstance(op, dict) and isinstance(op.get("user"), int):
            return op["user"]
    if isinstance(row.user_ids, list) and row.user_ids and isinstance(row.user_ids[0], int):
        return row.user_ids[0]
    return 0


def backfill(apps, schema_editor):
    for name in ("OutboxEvent", "DeadLetter"):
        model = apps.get_model("chatserver", name)
        for row in model.objects.iterator():
            key = key_of(row)
            if key:
                model.objects.filter(id=row.id).update(partition_key=key)


class Migration(migrations.Migration):
    dependencies = [("chatserver", "0008_rate_bucket_unlogged")]

    operations = [
        migrations.AddField(
            model_name="outboxevent", name="partition_key", field=models.BigIntegerField(default=0, db_default=0),
        ),
        migrations.AddField(
            model_name="deadletter", name="partition_key", field=models.BigIntegerField(default=0, db_default=0),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
