"""Deactivation is complete whatever the path: a user saved inactive (`User.save`), or made
inactive without a save (the presence worker's sweep), keeps no device: its HTTP tokens
stop working, its MQTT accounts are deleted at the broker through the outbox (as a logout
does), its open connections are dropped and it receives nothing afterwards."""

import threading

import pytest
from django.db import connection, connections, transaction

from accounts.errors import InvalidCredentials
from accounts.models import Device, User
from accounts.services import inactive_devices_sign_out, user_login
from chatserver.broker_access import DeviceRemove
from chatserver.models import OutboxEvent
from tests.support.factories import PASSWORD, group_chat, login, make_user
from tests.support.mqtt import MqttProbe
from tests.support.stack import wait_until

pytestmark = pytest.mark.django_db

# What paho reports for a CONNACK "not authorised" (3.1.1 code 5).
# CONNACK refusals as paho reports them: Mosquitto says "not authorised", RabbitMQ 3.10
# "bad user name or password" (its HTTP auth backend's refusal).
REFUSED_LOGIN = {135, 134}


def removed(device: Device) -> dict:
    return DeviceRemove(user=device.user_id, username=device.mqtt_username, client_id=device.mqtt_client_id).to_json()


def test_saving_a_user_inactive_signs_every_device_out_in_one_outbox_row():
    # given: alice on two devices
    alice = make_user()
    tablet = login(alice)
    OutboxEvent.objects.all().delete()

    # when: a plain ORM save, as a shell or a script would do it
    user = User.objects.get(id=alice.id)
    user.is_active = False
    user.save()

    # then
    assert not Device.objects.filter(user_id=alice.id).exists()
    [row] = OutboxEvent.objects.all()
    assert row.access == [removed(alice.device), removed(tablet.device)]
    assert alice.client.get("/accounts/me/").status_code == 401
    assert tablet.client.get("/accounts/me/").status_code == 401


def test_saving_an_active_user_or_an_inactive_one_without_devices_queues_nothing():
    # given
    alice, bob = make_user(), make_user()
    OutboxEvent.objects.all().delete()
    user = User.objects.get(id=alice.id)
    user.is_active = False
    user.save()
    OutboxEvent.objects.all().delete()

    # when
    user.first_name = "Alice"
    user.save()
    other = User.objects.get(id=bob.id)
    other.first_name = "Bob"
    other.save()

    # then
    assert OutboxEvent.objects.count() == 0
    assert bob.client.get("/accounts/me/").status_code == 200
    assert Device.objects.filter(user_id=bob.id).count() == 1


def test_a_save_that_leaves_is_active_alone_signs_nobody_out():
    # given: alice made inactive behind the model's back (the sweep's case)
    alice = make_user()
    User.objects.filter(id=alice.id).update(is_active=False)
    OutboxEvent.objects.all().delete()
    user = User.objects.get(id=alice.id)

    # when: a save of other fields only
    user.first_name = "Alice"
    user.save(update_fields=["first_name"])

    # then: left to the sweep
    assert OutboxEvent.objects.count() == 0
    assert Device.objects.filter(user_id=alice.id).count() == 1


def test_the_sweep_signs_out_the_devices_of_users_made_inactive_without_a_save():
    # given: alice (two devices) deactivated by a bulk update; bob active
    alice, bob = make_user(), make_user()
    tablet = login(alice)
    User.objects.filter(id=alice.id).update(is_active=False)
    OutboxEvent.objects.all().delete()

    # when
    swept = inactive_devices_sign_out()

    # then
    assert swept == 2
    [row] = OutboxEvent.objects.all()
    assert row.access == [removed(alice.device), removed(tablet.device)]
    assert list(Device.objects.values_list("user_id", flat=True)) == [bob.id]
    # and a second round finds nothing
    assert inactive_devices_sign_out() == 0
    assert OutboxEvent.objects.count() == 1


# --- at the broker -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["save", "update"])
def test_a_deactivated_users_connection_is_dropped_and_gets_nothing_afterwards(relay, broker, path):
    # given: alice, bob and carol in a group; alice's phone connected with a persistent
    # session on her user and chat topics; carol listening on the chat
    alice, bob, carol = make_user(), make_user(), make_user()
    chat_id = group_chat(bob, alice, carol)
    alice_probe = MqttProbe(broker.host, broker.port)
    carol_probe = MqttProbe(broker.host, broker.port)
    try:
        assert alice_probe.connect(**alice.mqtt, clean_session=False) == 0
        assert alice_probe.subscribe(f"chat/users/{alice.id}") == 1
        assert alice_probe.subscribe(f"chat/chats/{chat_id}") == 1
        assert carol_probe.connect(**carol.mqtt) == 0
        assert carol_probe.subscribe(f"chat/chats/{chat_id}") == 1
        alice_probe.clear()

        # when: deactivated by a plain ORM save, or by a bulk update no save sees
        if path == "save":
            user = User.objects.get(id=alice.id)
            user.is_active = False
            user.save()
        else:
            User.objects.filter(id=alice.id).update(is_active=False)

        # then: her connection is dropped (the sweep runs every 5 s)
        assert alice_probe.wait_disconnected(timeout=3 if path == "save" else 15)
        # and a message sent afterwards reaches carol, not alice: not live...
        sent = bob.client.post(f"/chats/{chat_id}/messages/", {"content": "after"}, format="json")
        assert sent.status_code == 201
        wait_until(lambda: any(b'"after"' in m.payload for m in carol_probe.messages), 10, "carol's copy")
        # ...nor on reconnecting with the old credentials, which are refused
        assert alice_probe.connect(**alice.mqtt, clean_session=False) in REFUSED_LOGIN
        alice_probe.expect_nothing(0.5)
        assert alice_probe.messages == []
        # and her HTTP token is refused
        assert alice.client.get("/accounts/me/").status_code == 401
        assert not Device.objects.filter(user_id=alice.id).exists()
    finally:
        alice_probe.close()
        carol_probe.close()


@pytest.mark.django_db(transaction=True)
def test_a_login_racing_a_deactivation_is_refused_and_leaves_no_device():
    # given: alice's deactivation under way (her row saved inactive, not committed yet)
    alice = make_user()
    outcome = []

    def log_in():
        try:
            user_login(username=alice.username, password=PASSWORD)
            outcome.append("logged in")
        except InvalidCredentials:
            outcome.append("refused")
        except BaseException as exc:
            outcome.append(repr(exc))
        finally:
            connections.close_all()

    with transaction.atomic():
        user = User.objects.select_for_update().get(id=alice.id)
        user.is_active = False
        user.save()
        # when: a login with her password starts meanwhile (it read her as active) and
        # reaches her row's lock
        racer = threading.Thread(target=log_in)
        racer.start()

        def racer_waits_for_the_lock() -> bool:
            with connection.cursor() as cursor:
                # Statistics are read once per transaction unless the snapshot is dropped.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                return cursor.fetchone()[0] > 0

        wait_until(lambda: racer_waits_for_the_lock() or outcome, 10, "the login to wait for alice's row")
        assert outcome == []  # still waiting
    racer.join(10)

    # then
    assert outcome == ["refused"]
    assert not Device.objects.filter(user_id=alice.id).exists()
