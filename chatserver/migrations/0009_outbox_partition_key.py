"""Relays partitioned by chat: every outbox row (and dead letter) says which partition
sends it (`partition_key`, see `chatserver.outbox.partition_key`).

A database default of 0 too: rows inserted by hand (an operator's SQL, the tests') go to
partition 0. Rows already queued get their key from the same rule, frozen here (a migration must not
follow later changes of the code): else a chat's old rows would all be partition 0's and
its new ones another's, out of order while the backlog drains.

`partition` (= `partition_key % RELAY_PARTITIONS`, set by `outbox.enqueue`, and by every
relay when it starts for rows queued under another N) is indexed with the id: a relay's
`WHERE partition = k ORDER BY id LIMIT 500` is a range of that index. On
`partition_key % N` PostgreSQL estimated 0.5% of the rows and scanned and sorted the
whole table for every batch: 2.5-6 ms on 6,000 rows, growing with the backlog (README,
"Relays partitioned by chat").
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
        migrations.AddField(
            model_name="outboxevent", name="partition", field=models.SmallIntegerField(default=0, db_default=0),
        ),
        migrations.AddIndex(
            model_name="outboxevent",
            index=models.Index(fields=["partition", "id"], name="chat_outbox_partition_idx"),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
