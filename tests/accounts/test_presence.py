"""Presence: the tracker's rules (pure), then devices, Last Wills and friends end to end."""

import json
import time

import pytest
from django.utils import timezone

from accounts.models import Device, User
from accounts.presence import PresenceTracker, fold
from chat_sim.api import Api
from chat_sim.mqtt import Listener
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


def device(broker, user, *, will=True, auto_reconnect=False) -> MqttProbe:
    probe = MqttProbe(broker.host, broker.port, auto_reconnect=auto_reconnect)
    topic = f"chat/presence/{user.id}/{user.mqtt['client_id']}"
    probe.presence_topic = topic
    kwargs = {"will": {"topic": topic, "payload": "offline", "retain": True}} if will else {}
    assert probe.connect(**user.mqtt, **kwargs) == 0
    return probe


def retained(broker, topic) -> list[bytes]:
    """What the broker keeps retained on `topic` (what a subscriber, or the next start of
    the presence worker, would find there)."""
    probe = MqttProbe(broker.host, broker.port)
    try:
        assert probe.connect(username=broker.admin_username, password=broker.admin_password,
                             client_id=f"probe-{time.monotonic_ns()}") == 0
        probe.subscribe(topic)
        time.sleep(0.5)  # a retained message comes right after SUBACK
        return [m.payload for m in probe.messages]
    finally:
        probe.close()


class AnsweringPhone:
    """The simulator's phone (chat_sim.mqtt.Listener: persistent session, Will, `online`
    on connect and when probed), refreshing its presence only every `keepalive` seconds:
    longer than the server's ttl, so that only answering `presence.probe` keeps it online."""

    def __init__(self, stack, user, *, keepalive: int = 60) -> None:
        mqtt = {**user.mqtt, "host": stack.broker.host, "port": stack.broker.port,
                "user_topic": f"chat/users/{user.id}", "keepalive": keepalive}
        self.items = []
        self.user_id = user.id
        self.listener = Listener(Api(stack.url, user.token), user_id=user.id, mqtt=mqtt,
                                 on_item=self.items.append)
        self.listener.start()
        assert self.listener.wait_ready(10), self.items

    def close(self) -> None:
        """Close like the app (`offline` first), and wait for the server to have applied
        it: no worker is writing when the test's teardown empties the tables."""
        self.listener.stop()
        wait_until(lambda: User.objects.get(id=self.user_id).presence == "offline", 10, "the phone's offline")


def device_connected(user) -> bool:
    return Device.objects.filter(Device.connected_q(now=timezone.now()), id=user.device.id).exists()


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
def test_friends_see_a_device_come_and_its_last_will_go_and_others_see_nothing(relay, broker):
    # given
    alice, bob, carol = make_user(), make_user(), make_user()
    befriend(alice, bob)
    bob_phone, carol_phone = MqttProbe(broker.host, broker.port), MqttProbe(broker.host, broker.port)
    for probe, user in [(bob_phone, bob), (carol_phone, carol)]:
        assert probe.connect(**user.mqtt) == 0
        assert probe.subscribe(f"chat/users/{user.id}") == 1
    alice_phone = device(broker, alice)
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
def test_online_if_any_device_is_and_logout_clears_the_device(relay, broker):
    alice, bob = make_user(), make_user()
    tablet = login(alice)
    befriend(alice, bob)
    phone, pad = device(broker, alice), device(broker, tablet)
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
    assert tracker.take_devices() == {1: ("online", 10.0), 2: ("away", 10.0)}
    assert tracker.due(now=0.0) == [(5, "online")]

    tracker.observe(5, "chat-5-1", b"online", now=8.0, ttl=10.0)  # the phone refreshes
    assert tracker.expire(now=10.0) == [(5, "chat-5-2")]  # the tablet did not
    assert tracker.take_devices() == {1: ("online", 18.0), 2: ("offline", None)}
    assert tracker.expire(now=17.9) == []
    assert tracker.expire(now=18.0) == [(5, "chat-5-1")]
    assert tracker.due(now=18.0) == [(5, "offline")]
    assert tracker.take_devices() == {1: ("offline", None)}


def test_after_a_reconnection_what_was_known_holds_until_the_grace_is_up_no_longer_no_shorter():
    tracker = PresenceTracker(min_interval=0.0)
    tracker.observe(5, "chat-5-1", b"online", now=0.0, ttl=60.0)
    tracker.observe(6, "chat-6-3", b"away", now=0.0, ttl=2.0)
    # the broker went away at 1.0 and is back at 3.0: 6's report ran out meanwhile,
    # unexpired (nothing expires while the worker cannot hear its refreshes)

    assert tracker.hold_until(8.0) == {5, 6}

    assert tracker.expire(now=7.9) == []  # 6 is given the grace too: it may be reconnecting
    tracker.observe(6, "chat-6-3", b"away", now=7.0, ttl=2.0)  # and it did, and said so
    assert tracker.expire(now=8.0) == [(5, "chat-5-1")]  # not repeated: gone at the grace's end
    assert tracker.expire(now=9.0) == [(6, "chat-6-3")]  # its own report again
    assert tracker.hold_until(10.0) == set()


def test_a_live_offline_decides_its_user_only_once_its_connection_stayed_up_a_moment():
    from accounts.workers import OFFLINE_SETTLE, PresenceWorker

    # given: a worker (not connected: its methods only) that knows alice's phone online
    worker = PresenceWorker()
    worker.tracker = PresenceTracker(min_interval=0.0)
    worker.tracker.observe(5, "chat-5-1", b"online", now=0.0, ttl=60.0)
    worker.tracker.observe(6, "chat-6-2", b"online", now=0.0, ttl=60.0)
    assert sorted(worker.tracker.due(now=0.0)) == [(5, "online"), (6, "online")]
    worker.tracker.take_devices()

    # when: both say `offline` (a Will, or a stopping broker's), and bob's phone is back at once
    worker._receive(("t", 5, "chat-5-1", b"offline", False), now=1.0, ttl=60.0)
    worker._receive(("t", 6, "chat-6-2", b"offline", False), now=1.0, ttl=60.0)
    worker._receive(("t", 6, "chat-6-2", b"online", False), now=1.2, ttl=60.0)

    # then: alice's device counts as not connected at once (pushes wake it), her state
    # waits; bob's later report replaced his offline
    assert worker.tracker.take_devices() == {1: ("offline", None), 2: ("online", 61.2)}
    worker._settle_offline(now=1.0 + OFFLINE_SETTLE - 0.01, ttl=60.0)
    assert worker.tracker.due(now=1.4) == [] and worker.tracker.known_present() == {5, 6}
    # ...until the connection it came on stayed up OFFLINE_SETTLE
    worker._settle_offline(now=1.0 + OFFLINE_SETTLE, ttl=60.0)
    assert worker.tracker.due(now=1.5) == [(5, "offline")]
    assert worker.held_offline == {}
    worker.close()


@pytest.mark.django_db(transaction=True)
def test_a_device_that_leaves_without_offline_or_will_is_offline_within_two_keepalives(relay, broker):
    # given: a phone reconnecting after a kick republished `online`, then shut down
    # cleanly without `offline` (a clean DISCONNECT fires no Will): its retained
    # `online` stays on the broker with nobody behind it
    alice, bob = make_user(), make_user()
    befriend(alice, bob)
    phone = device(broker, alice)
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
def test_a_device_that_refreshes_stays_online(relay, broker):
    alice = make_user()
    phone = device(broker, alice)
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
def test_what_a_device_publishes_besides_its_state_is_not_kept(relay, broker):
    # given
    alice = make_user()
    phone = device(broker, alice, will=False)

    # when: 200 KB, retained, on its own presence topic
    assert phone.publish(phone.presence_topic, b"x" * 200_000, retain=True)
    phone.close()

    # then: the server clears it; a newcomer finds nothing retained there
    wait_until(lambda: retained(broker, phone.presence_topic) == [], 10, "the retained garbage to be cleared")
    assert User.objects.get(id=alice.id).presence == "offline"


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_after_a_server_restart_nobody_stays_online(relay, presence_process, broker):
    # given: the database says alice is online, but no device of hers is
    alice = make_user()
    presence_process.stop()
    User.objects.filter(id=alice.id).update(presence="online")

    # when
    presence_process.start()

    # then
    wait_until(lambda: User.objects.get(id=alice.id).presence == "offline", 15, "alice reset to offline")


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
# Mosquitto's dynamic security drops a user's connections on a grant; RabbitMQ asks
# Django at the SUBSCRIBE and drops nobody (chatserver/rabbit_access.py).
@pytest.mark.mosquitto_only
def test_a_device_kicked_by_a_membership_change_that_reconnects_then_leaves_cleanly_leaves_no_trace(
    relay, broker
):
    # given: alice's phone is online
    alice, bob = make_user(), make_user()
    phone = device(broker, alice, auto_reconnect=True)
    phone.publish(phone.presence_topic, "online", retain=True)
    wait_until(lambda: User.objects.get(id=alice.id).presence == "online", 10, "online")

    # when: bob puts her in a group (the broker drops her connection), her phone
    # reconnects and says `online` again, then shuts down cleanly without `offline`
    assert bob.client.post("/chats/", {"name": "team", "members": [alice.id]}, format="json").status_code == 201
    assert phone.wait_reconnected(after=1, timeout=10), "the broker did not drop and readmit the phone"
    phone.publish(phone.presence_topic, "online", retain=True)
    time.sleep(0.5)
    phone.disconnect()
    gone_at = time.monotonic()

    # then: offline within two keepalives (5 s in the suite), plus the sweep and damping...
    wait_until(lambda: User.objects.get(id=alice.id).presence == "offline", 15, "offline")
    assert time.monotonic() - gone_at <= 2 * 5 + 2 + 1.5
    assert not device_connected(alice)
    # ...and nothing on the broker that a restart would take for a live device
    wait_until(lambda: retained(broker, phone.presence_topic) == [], 5, "the stale `online` cleared")


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_after_a_presence_worker_restart_a_stale_online_goes_within_10_s_and_a_connected_phone_stays(
    live_stack, presence_process, broker
):
    # given: alice's phone left a retained `online` while the presence worker was down
    # (a crash); bob's phone is connected
    alice, bob = make_user(), make_user()
    bob_phone = AnsweringPhone(live_stack, bob)
    alice_phone = device(broker, alice)
    alice_phone.publish(alice_phone.presence_topic, "online", retain=True)
    wait_until(lambda: User.objects.get(id=alice.id).presence == "online", 10, "alice online")
    wait_until(lambda: User.objects.get(id=bob.id).presence == "online", 10, "bob online")
    presence_process.kill()
    alice_phone.disconnect()
    watcher = MqttProbe(broker.host, broker.port)  # checks what comes against the contract
    assert watcher.connect(username=broker.admin_username, password=broker.admin_password,
                           client_id=f"watcher-{time.monotonic_ns()}") == 0
    assert watcher.subscribe(f"chat/users/{bob.id}") == 1
    try:
        # when
        presence_process.start()
        started = time.monotonic()

        # then: alice is offline within 10 s; bob, whose phone answered the probe, is not
        wait_until(lambda: User.objects.get(id=alice.id).presence == "offline", 12, "alice offline")
        assert time.monotonic() - started <= 10
        assert not device_connected(alice)
        assert User.objects.get(id=bob.id).presence == "online"
        assert device_connected(bob)
        probes = [r for r in watcher.messages if json.loads(r.payload)["type"] == "presence.probe"]
        assert len(probes) == 1 and probes[0].qos == 0
    finally:
        watcher.close()
        bob_phone.close()
        if not presence_process.alive():
            presence_process.start()


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_after_a_broker_restart_a_phone_that_did_not_come_back_goes_within_10_s(broker, relay):
    # given: both phones online
    alice, bob = make_user(), make_user()
    phones = [device(broker, user) for user in (alice, bob)]
    for phone in phones:
        phone.publish(phone.presence_topic, "online", retain=True)
    wait_until(lambda: all(User.objects.get(id=u.id).presence == "online" for u in (alice, bob)), 10, "both online")
    reported = time.monotonic()
    try:
        # when: the broker restarts (it keeps both retained `online`s), down for longer
        # than a report lasts (2 x MQTT_KEEPALIVE = 10 s here; a RabbitMQ node takes 5-15 s
        # to boot); alice's phone is gone meanwhile, and bob's reconnects 3 s after the
        # broker is back (after the presence worker, which retries every 2 s at most)
        broker.stop()
        for phone in phones:
            phone.close()
        time.sleep(max(0.0, reported + 2 * 5 + 0.5 - time.monotonic()))
        broker.start()
        started = time.monotonic()
        bob_seen = set()

        def watch(until: float) -> None:
            while time.monotonic() < until and User.objects.get(id=alice.id).presence != "offline":
                bob_seen.add(User.objects.get(id=bob.id).presence)
                time.sleep(0.05)

        watch(started + 3)
        phones.append(device(broker, bob))
        phones[-1].publish(phones[-1].presence_topic, "online", retain=True)
        watch(started + 12)

        # then: alice is offline within 10 s, and bob never was meanwhile
        assert User.objects.get(id=alice.id).presence == "offline"
        assert time.monotonic() - started <= 10
        assert bob_seen | {User.objects.get(id=bob.id).presence} == {"online"}
        assert device_connected(bob)
    finally:
        for phone in phones:
            phone.close()


@pytest.mark.django_db
def test_a_burst_of_devices_seen_in_one_round_is_stored_in_one_statement():
    # given: 50 phones of 50 users reporting in the same round (as the worker folds them)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from accounts.presence import device_presence_store
    from accounts.workers import PresenceWorker

    users = [make_user() for _ in range(50)]
    tracker = PresenceTracker()
    for user in users:
        tracker.observe(user.id, user.mqtt["client_id"], b"online", now=100.0, ttl=10.0)
    wall = PresenceWorker._clock()

    # when
    with CaptureQueriesContext(connection) as queries:
        device_presence_store(states={d: (state, wall(until)) for d, (state, until) in tracker.take_devices().items()})

    # then
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["UPDATE"]
    assert Device.objects.filter(presence="online", presence_expires_at__isnull=False).count() == 50
