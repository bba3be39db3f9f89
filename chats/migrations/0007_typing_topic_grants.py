"""Gives every existing chat its typing topic, `chat/chats/<id>/typing`.

`typing.updated` moved from the chat's topic to a topic of its own, which phones subscribe
to at QoS 0 (so that no broker queues it for an offline session: docs/mqtt.md). A chat
made before has a broker role without that topic on Mosquitto; replaying `ChatAdd` for it
(idempotent: its `addRoleACL` commands add what is missing, chatserver/broker_access.py)
grants it. Queued in the outbox like any access operation, one row per chat in the chat's
own partition (the relay applies them in order with the chat's other rows, once the
broker is up). Each addition drops the connections of that chat's members once
(Mosquitto 2.0.11 disconnects the clients of a role that changes); they reconnect and
keep their sessions. On RabbitMQ `ChatAdd` is nothing to do: Django answers from the
database. A fresh install has no chats: nothing is queued.
"""

from django.db import migrations


# Rows per INSERT (the chats are read in id order, a page at a time).
BATCH = 1000


def queue_grants(apps, schema_editor):
    Chat = apps.get_model("chats", "Chat")
    OutboxEvent = apps.get_model("chatserver", "OutboxEvent")
    chat_ids = Chat.objects.order_by("id").values_list("id", flat=True).iterator(chunk_size=BATCH)
    batch = []
    for chat_id in chat_ids:
        # Its partition (`partition_key % RELAY_PARTITIONS`) is set by the relays: each
        # moves the rows queued under another N as it takes its partition.
        batch.append(OutboxEvent(payload="", user_ids=[], chat_id=None, partition_key=chat_id,
                                 access=[{"op": "chat_add", "chat": chat_id}]))
        if len(batch) == BATCH:
            OutboxEvent.objects.bulk_create(batch)
            batch = []
    OutboxEvent.objects.bulk_create(batch)


class Migration(migrations.Migration):
    dependencies = [
        ("chats", "0006_sqlite_fts5"),
        ("chatserver", "0009_outbox_partition_key"),
    ]

    operations = [migrations.RunPython(queue_grants, migrations.RunPython.noop)]
