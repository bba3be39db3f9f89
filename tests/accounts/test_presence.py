"""Presence: the tracker's rules (pure), then devices, Last Wills and friends end to end."""

import json
import time

import pytest
from django.utils import timezone

from accounts.models import Device, User
from accounts.presence import PresenceTracker, fold
from tests.support.factories import login, make_user
from tests.support.mqtt import MqttProbe
from tests.support.stack import wait_until

# --- the rules (no I/O) -----------------------------------------------------------------


def test_a_user_is_online_if_any_device_is_else_away_if_any_is():
    assert fold([]) == "offline"
    assert fold(["away"]) == "away"
    assert fold(["away", "online"]) == "online"


def test_tracker_folds_devices_and_damps_flapping():
    tracker = PresenceTracker(min_interval=2.0)

    tracker.observe(5, "chat-5-1", b"online")
    assert tracker.due(now=100.0) == [(5, "online")]
    tracker.observe(5, "chat-5-1", b"offline")
    tracker.observe(5, "chat-5-2", b"away")
    assert tracker.due(now=101.0) == []  # too soon after the last change
    assert tracker.due(now=102.0) == [(5, "away")]
    tracker.observe(5, "chat-5-2", b"")  # cleared retained presence: the device is gone
    tracker.observe(5, "chat-5-1", b"online")
    tracker.observe(5, "chat-5-1", b"away")
    tracker.observe(5, "chat-5-1", b"online")
    assert tracker.due(now=110.0) == [(5, "online")]  # one event for the whole flap
    assert tracker.due(now=120.0) == []


@pytest.mark.parametrize(
    "user_id, client_id, payload",
    [(5, "chat-6-1", b"online"), (5, "phone", b"online"), (5, "chat-5-1", b"busy"), (5, "chat-5-1", b"\xff")],
)
def test_tracker_ignores_reports_that_are_not_a_device_s_state(user_id, client_id, payload):
    tracker = PresenceTracker()

    assert tracker.observe(user_id, client_id, payload) is False
    assert tracker.due(now=0.0) == []
    assert tracker.known_present() == set()


# --- end to end -------------------------------------------------------------------------


def device(broker, user, *, will=True) -> MqttProbe:
    probe = MqttProbe(broker.host, broker.port)
    topic = f"chat/presence/{user.id}/{user.mqtt['client_id']}"
    probe.presence_topic = topic
    kwargs = {"will": {"topic": topic, "payload": "offline", "retain": True}} if will else {}
    assert probe.connect(**user.mqtt, **kwargs) == 0
    return probe


def befriend(a, b):
    a.client.post(f"/accounts/{a.id}/friends/{b.id}/")
    b.client.post(f"/accounts/{b.id}/friends/{a.id}/")


def presence_events(probe, about):
    return [
        e["data"]["presence"]
        for e in (json.loads(r.payload) for r in probe.messages)
        if e["type"] == "presence.updated" and e["data"]["id"] == about
    ]


@pytest.mark.django_db(transaction=True)
def test_friends_see_a_device_come_and_its_last_will_go_and_others_see_nothing(relay, mosquitto):
    # given
    alice, bob, carol = make_user(), make_user(), make_user()
    befriend(alice, bob)
    bob_phone, carol_phone = MqttProbe(mosquitto.host, mosquitto.port), MqttProbe(mosquitto.host, mosquitto.port)
    for probe, user in [(bob_phone, bob), (carol_phone, carol)]:
        assert probe.connect(**user.mqtt) == 0
        assert probe.subscribe(f"chat/users/{user.id}") == 1
    alice_phone = device(mosquitto, alice)
    try:
        # when: the app comes to the foreground...
        alice_phone.publish(alice_phone.presence_topic, "online", retain=True)
        wait_until(lambda: presence_events(bob_phone, alice.id) == ["online"], 10, "alice online")
        assert User.objects.get(id=alice.id).presence == "online"

        # ...and then dies without a word: its Last Will speaks for it
        alice_phone.drop()
        wait_until(lambda: presence_events(bob_phone, alice.id) == ["online", "offline"], 15, "alice offline")
    finally:
        for probe in (alice_phone, bob_phone, carol_phone):
            probe.close()

    # then
    profile = bob.client.get(f"/accounts/{alice.id}/").json()
    assert profile["presence"] == "offline"
    assert profile["last_seen"] is not None
    assert presence_events(carol_phone, alice.id) == []


@pytest.mark.django_db(transaction=True)
def test_online_if_any_device_is_and_logout_clears_the_device(relay, mosquitto):
    alice, bob = make_user(), make_user()
    tablet = login(alice)
    befriend(alice, bob)
    phone, pad = device(mosquitto, alice), device(mosquitto, tablet)
    try:
        phone.publish(phone.presence_topic, "online", retain=True)
        pad.publish(pad.presence_topic, "away", retain=True)
        wait_until(lambda: User.objects.get(id=alice.id).presence == "online", 10, "online")

        # the phone logs out: the broker cuts it off, no Will fires, the server clears it
        assert alice.client.post("/accounts/logout/").status_code == 204
        wait_until(lambda: User.objects.get(id=alice.id).presence == "away", 10, "away (the tablet)")
    finally:
        phone.close()
        pad.close()


def test_a_report_holds_for_its_ttl_unless_refreshed():
    tracker = PresenceTracker(min_interval=0.0)
    tracker.observe(5, "chat-5-1", b"online", now=0.0, ttl=10.0)
    tracker.observe(5, "chat-5-2", b"away", now=0.0, ttl=10.0)
    assert tracker.take_devices() == {1: "online", 2: "away"}
    assert tracker.due(now=0.0) == [(5, "online")]

    tracker.observe(5, "chat-5-1", b"online", now=8.0, ttl=10.0)  # the phone refreshes
    assert tracker.expire(now=10.0) == 1  # the tablet did not
    assert tracker.take_devices() == {1: "online", 2: "offline"}
    assert tracker.expire(now=17.9) == 0
    assert tracker.expire(now=18.0) == 1
    assert tracker.due(now=18.0) == [(5, "offline")]
    assert tracker.take_devices() == {1: "offline"}


@pytest.mark.django_db(transaction=True)
def test_a_device_that_leaves_without_offline_or_will_is_offline_within_two_keepalives(relay, mosquitto):
    # given: a phone reconnecting after a kick republished `online`, then shut down
    # cleanly without `offline` (a clean DISCONNECT fires no Will): its retained
    # `online` stays on the broker with nobody behind it
    alice, bob = make_user(), make_user()
    befriend(alice, bob)
    phone = device(mosquitto, alice)
    phone.publish(phone.presence_topic, "online", retain=True)
    wait_until(lambda: User.objects.get(id=alice.id).presence == "online", 10, "online")
    assert Device.objects.filter(Device.connected_q(now=timezone.now()), id=alice.device.id).exists()

    # when
    phone.close()
    gone_at = time.monotonic()

    # then: offline within 2 x keepalive (5 s in the suite), plus the 2 s damping
    wait_until(lambda: User.objects.get(id=alice.id).presence == "offline", 15, "offline")
    assert time.monotonic() - gone_at <= 2 * 5 + 2 + 1.5
    stored = Device.objects.get(id=alice.device.id)
    assert (stored.presence, stored.presence_expires_at) == ("offline", None)
    assert not Device.objects.filter(Device.connected_q(now=timezone.now()), id=stored.id).exists()


@pytest.mark.django_db(transaction=True)
def test_a_device_that_refreshes_stays_online(relay, mosquitto):
    alice = make_user()
    phone = device(mosquitto, alice)
    try:
        phone.publish(phone.presence_topic, "online", retain=True)
        wait_until(lambda: User.objects.get(id=alice.id).presence == "online", 10, "online")
        deadline = time.monotonic() + 12  # past two keepalives
        while time.monotonic() < deadline:
            phone.publish(phone.presence_topic, "online", retain=True)
            time.sleep(2.5)
            assert User.objects.get(id=alice.id).presence == "online"
        assert Device.objects.filter(Device.connected_q(now=timezone.now()), id=alice.device.id).exists()
    finally:
        phone.close()


@pytest.mark.django_db(transaction=True)
def test_what_a_device_publishes_besides_its_state_is_not_kept(relay, mosquitto):
    # given
    alice = make_user()
    phone = device(mosquitto, alice, will=False)

    # when: 200 KB, retained, on its own presence topic
    assert phone.publish(phone.presence_topic, b"x" * 200_000, retain=True)
    phone.close()

    # then: the server clears it; a newcomer finds nothing retained there
    def retained_now():
        probe = MqttProbe(mosquitto.host, mosquitto.port)
        try:
            assert probe.connect(username=mosquitto.admin_username, password=mosquitto.admin_password,
                                 client_id=f"probe-{time.monotonic_ns()}") == 0
            probe.subscribe(phone.presence_topic)
            time.sleep(0.5)  # a retained message comes right after SUBACK
            return [m.payload for m in probe.messages]
        finally:
            probe.close()

    wait_until(lambda: retained_now() == [], 10, "the retained garbage to be cleared")
    assert User.objects.get(id=alice.id).presence == "offline"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_after_a_server_restart_nobody_stays_online(relay, presence_process, mosquitto):
    # given: the database says alice is online, but no device of hers is
    alice = make_user()
    presence_process.stop()
    User.objects.filter(id=alice.id).update(presence="online")

    # when
    presence_process.start()

    # then
    wait_until(lambda: User.objects.get(id=alice.id).presence == "offline", 15, "alice reset to offline")
