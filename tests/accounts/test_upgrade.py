"""The upgrade of a first-version install's broker accounts (accounts migration 0004)."""

import importlib

import pytest
from django.apps import apps

from accounts.models import Device
from chatserver.broker_access import DeviceAdd, UserAdd, access_op_from_json
from chatserver.models import OutboxEvent
from tests.support.factories import login, make_user

pytestmark = pytest.mark.django_db

upgrade = importlib.import_module("accounts.migrations.0004_broker_access_upgrade")


def test_it_queues_every_user_and_device_as_the_server_names_them(monkeypatch):
    # given: users and devices, as an old install has them
    alice, bob = make_user(), make_user()
    login(alice)
    OutboxEvent.objects.all().delete()
    monkeypatch.setattr(upgrade, "OPS_PER_ROW", 3)

    # when
    upgrade.queue_upgrade(apps, None)

    # then: in order, in rows of at most OPS_PER_ROW, each an access operation the relay reads
    rows = list(OutboxEvent.objects.order_by("id"))
    assert [len(r.access) for r in rows] == [3, 2]
    assert all((r.payload, r.user_ids, r.chat_id) == ("", [], None) for r in rows)
    queued = [access_op_from_json(op) for r in rows for op in r.access]
    devices = list(Device.objects.order_by("id"))
    assert queued == [UserAdd(user=alice.id), UserAdd(user=bob.id)] + [
        DeviceAdd(user=d.user_id, username=d.mqtt_username, password=d.mqtt_password, client_id=d.mqtt_client_id)
        for d in devices
    ]


def test_a_fresh_install_queues_nothing():
    upgrade.queue_upgrade(apps, None)

    assert OutboxEvent.objects.count() == 0
