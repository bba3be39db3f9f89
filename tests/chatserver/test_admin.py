"""The operators' admin at /admin/: what an operator sees, and that its actions go through
the services (the outbox carries what a logout or a member's deletion would)."""

import json

import pytest
from django.test import Client

from accounts.models import Device, User
from chats.models import Message
from chatserver.broker_access import DeviceRemove
from chatserver.events import EventType
from chatserver.models import DeadLetter, OutboxEvent
from tests.support.factories import PASSWORD, login, make_user
from tests.support.mqtt import MqttProbe

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    User.objects.create_superuser(username="operator", password=PASSWORD)
    client = Client()
    assert client.login(username="operator", password=PASSWORD)
    return client


def action(client: Client, changelist: str, name: str, ids: list[int]):
    return client.post(changelist, {"action": name, "_selected_action": [str(i) for i in ids]}, follow=True)


def removed(device: Device) -> dict:
    return DeviceRemove(user=device.user_id, username=device.mqtt_username, client_id=device.mqtt_client_id).to_json()


def test_the_admin_serves_its_pages_and_static_files_and_only_to_operators():
    # given
    make_user("alice")
    anonymous = Client()

    # when / then: the login page and its stylesheet
    page = anonymous.get("/admin/login/")
    assert page.status_code == 200
    css = anonymous.get("/static/admin/css/base.css")
    assert css.status_code == 200
    assert css["Content-Type"].startswith("text/css")
    # someone who is not an operator goes to the login page, a user of the API too
    assert anonymous.get("/admin/accounts/user/").status_code == 302
    not_staff = Client()
    not_staff.force_login(User.objects.get(username="alice"))
    assert not_staff.get("/admin/accounts/user/").status_code == 302


def test_every_admin_list_and_a_chat_with_its_members_render(operator):
    # given
    alice, bob = make_user("alice"), make_user("bob")
    cid = alice.client.post("/chats/", {"members": [bob.id], "name": "team"}, format="json").json()["id"]
    alice.client.post(f"/chats/{cid}/messages/", {"content": "hello admin"}, format="json")
    DeadLetter.objects.create(outbox_id=1, created_at="2026-01-01T00:00:00Z", error="broker said no")

    # then
    for path in ["accounts/user", "accounts/device", "chats/chat", "chats/membership", "chats/message",
                 "chatserver/deadletter", "chatserver/outboxevent"]:
        response = operator.get(f"/admin/{path}/")
        assert response.status_code == 200, path
    assert b"broker said no" in operator.get("/admin/chatserver/deadletter/").content
    assert b"hello admin" in operator.get("/admin/chats/message/").content
    # searches by id or name, whatever is typed
    for path in ["accounts/user", "accounts/device", "chats/chat", "chats/membership", "chats/message",
                 "chatserver/deadletter"]:
        for q in [str(cid), "alice", "\u00e9t\u00e9", "99999999999999999999999"]:
            assert operator.get(f"/admin/{path}/", {"q": q}).status_code == 200, (path, q)
    assert b"hello admin" in operator.get("/admin/chats/message/", {"q": str(cid)}).content
    chat_page = operator.get(f"/admin/chats/chat/{cid}/change/")
    assert chat_page.status_code == 200
    assert b"alice" in chat_page.content and b"bob" in chat_page.content
    # read-only: nothing to add or delete by hand
    assert operator.get("/admin/chatserver/deadletter/add/").status_code == 403
    assert operator.get("/admin/chats/chat/add/").status_code == 403
    assert operator.get(f"/admin/accounts/user/{alice.id}/delete/").status_code == 403


def test_deactivating_a_user_signs_every_device_out_at_once(operator):
    # given: alice on two devices
    alice = make_user("alice")
    tablet = login(alice)
    OutboxEvent.objects.all().delete()

    # when
    response = action(operator, "/admin/accounts/user/", "deactivate", [alice.id])

    # then
    assert response.status_code == 200
    assert b"1 user(s) deactivated." in response.content
    assert not User.objects.get(id=alice.id).is_active
    assert not Device.objects.filter(user_id=alice.id).exists()
    assert alice.client.get("/accounts/me/").status_code == 401
    assert tablet.client.get("/accounts/me/").status_code == 401
    [row] = OutboxEvent.objects.all()
    assert row.access == [removed(alice.device), removed(tablet.device)]
    relogin = alice.client.post("/accounts/login/", {"username": "alice", "password": PASSWORD}, format="json")
    assert relogin.status_code == 401

    # and reactivating lets her log in again
    action(operator, "/admin/accounts/user/", "reactivate", [alice.id])
    relogin = alice.client.post("/accounts/login/", {"username": "alice", "password": PASSWORD}, format="json")
    assert relogin.status_code == 200


def test_revoking_a_device_is_a_logout_of_it(operator):
    # given
    alice = make_user("alice")
    tablet = login(alice)
    OutboxEvent.objects.all().delete()

    # when
    response = action(operator, "/admin/accounts/device/", "revoke", [tablet.device.id])

    # then
    assert b"1 device(s) signed out." in response.content
    assert tablet.client.get("/accounts/me/").status_code == 401
    assert alice.client.get("/accounts/me/").status_code == 200
    [row] = OutboxEvent.objects.all()
    assert row.access == [removed(tablet.device)]


def test_the_delete_button_of_a_device_revokes_it_too(operator):
    alice = make_user("alice")
    OutboxEvent.objects.all().delete()

    response = operator.post(f"/admin/accounts/device/{alice.device.id}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert alice.client.get("/accounts/me/").status_code == 401
    [row] = OutboxEvent.objects.all()
    assert row.access == [removed(alice.device)]


def test_soft_deleting_a_message_tells_the_members(operator):
    # given
    alice, bob = make_user("alice"), make_user("bob")
    cid = alice.client.post("/chats/", {"members": [bob.id], "name": "team"}, format="json").json()["id"]
    sent = alice.client.post(f"/chats/{cid}/messages/", {"content": "spam"}, format="json").json()
    OutboxEvent.objects.all().delete()

    # when
    response = action(operator, "/admin/chats/message/", "soft_delete", [sent["id"]])

    # then
    assert b"1 message(s) deleted." in response.content
    message = Message.objects.get(id=sent["id"])
    assert (message.deleted, message.content) == (True, "This message was deleted.")
    [row] = OutboxEvent.objects.all()
    event = json.loads(row.payload)
    assert (event["type"], event["chat"], event["data"]["deleted"]) == (EventType.MESSAGE_UPDATED, cid, True)
    assert sorted(row.user_ids) == sorted([alice.id, bob.id])
    assert event["version"] == message.version
    # again: nothing more
    action(operator, "/admin/chats/message/", "soft_delete", [sent["id"]])
    assert OutboxEvent.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_deactivated_users_devices_are_cut_off_at_the_broker(relay, broker):
    # given: alice connected on two devices
    User.objects.create_superuser(username="operator", password=PASSWORD)
    client = Client()
    client.force_login(User.objects.get(username="operator"))
    alice = make_user()
    tablet = login(alice)
    probes = [MqttProbe(broker.host, broker.port), MqttProbe(broker.host, broker.port)]
    try:
        assert probes[0].connect(**alice.mqtt) == 0
        assert probes[1].connect(**tablet.mqtt) == 0

        # when
        action(client, "/admin/accounts/user/", "deactivate", [alice.id])

        # then
        assert probes[0].wait_disconnected(timeout=5)
        assert probes[1].wait_disconnected(timeout=5)
        assert probes[0].connect(**alice.mqtt) != 0
    finally:
        for probe in probes:
            probe.close()
