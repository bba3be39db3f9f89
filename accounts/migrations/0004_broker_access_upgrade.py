"""Brings the broker accounts of an install made by the first version up to date.

The first version's user roles let any device of a user publish under
`chat/presence/<user>/+` (any client id, any payload, retained), and devices had no role
of their own. Replaying `UserAdd` for every user and `DeviceAdd` for every device (both
idempotent, see chatserver/broker_access.py) drops that grant and gives each device its
own role. They are queued in the outbox like any access operation, so the relay applies
them in order, once the broker is up; each device is disconnected once and reconnects.
A fresh install has no users yet: nothing is queued.
"""

from django.db import migrations
from django.utils.crypto import salted_hmac

# Operations per outbox row: rows stay small, and the relay applies each in one message.
OPS_PER_ROW = 200


def queue_upgrade(apps, schema_editor):
    User = apps.get_model("accounts", "User")
    Device = apps.get_model("accounts", "Device")
    OutboxEvent = apps.get_model("chatserver", "OutboxEvent")
    ops = [{"op": "user_add", "user": user_id} for user_id in User.objects.order_by("id").values_list("id", flat=True)]
    for device_id, user_id, token_hash in Device.objects.order_by("id").values_list("id", "user_id", "token_hash"):
        # As accounts.models.Device names them (historical models have no properties).
        ops.append({
            "op": "device_add",
            "user": user_id,
            "username": f"device-{device_id}",
            "password": salted_hmac("accounts.Device.mqtt_password", token_hash, algorithm="sha256").hexdigest(),
            "client_id": f"chat-{user_id}-{device_id}",
        })
    for start in range(0, len(ops), OPS_PER_ROW):
        OutboxEvent.objects.create(payload="", user_ids=[], chat_id=None, access=ops[start : start + OPS_PER_ROW])


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0003_devices_push_and_presence"),
        ("chatserver", "0004_push_job"),
    ]

    operations = [migrations.RunPython(queue_upgrade, migrations.RunPython.noop)]
