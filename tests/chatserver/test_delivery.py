"""End to end: HTTP writes -> PostgreSQL -> outbox -> relay process -> the broker -> paho.

Each test commits its writes (the relay is another process), runs the real relay
(`manage.py relay`) against the session's broker, and listens with real paho clients.
"""

import json
import time

import pytest
from rest_framework.test import APIClient

from chatserver.models import OutboxEvent
from tests.support.factories import PASSWORD, group_chat, login, make_user, send_message
from tests.support.mqtt import MqttProbe, phone
from tests.support.stack import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def payloads(received) -> list[dict]:
    return [json.loads(r.payload) for r in received]


def messages_in(received, cid: int | None = None) -> list[dict]:
    """The message objects of `message.created` events, first copy of each id only."""
    seen, out = set(), []
    for event in payloads(received):
        if event["type"] == "message.created" and (cid is None or event["chat"] == cid):
            if event["data"]["id"] not in seen:
                seen.add(event["data"]["id"])
                out.append(event["data"])
    return out


def outbox_drained(timeout: float = 20):
    wait_until(lambda: not OutboxEvent.objects.exists(), timeout, "the relay to drain the outbox")


# --- credentials and topics -------------------------------------------------------------


def test_signup_credentials_work_by_the_time_the_response_arrives(relay, broker):
    # when
    body = APIClient().post("/accounts/signup/", {"username": "fresh", "password": PASSWORD}, format="json").json()

    # then: no wait, no retry
    probe = MqttProbe(broker.host, body["mqtt"]["port"])
    try:
        mqtt = body["mqtt"]
        assert probe.connect(mqtt["username"], mqtt["password"], mqtt["client_id"]) == 0
        assert probe.subscribe(mqtt["user_topic"]) == 1
        assert probe.refuses_subscribe(f"chat/users/{body['id'] + 1}")
        # (RabbitMQ closed the connection: a refusal there takes it along)
        if not probe.connected.is_set():
            assert probe.connect(mqtt["username"], mqtt["password"], mqtt["client_id"]) == 0
        assert probe.refuses_subscribe("chat/#")
    finally:
        probe.close()


def test_a_message_reaches_every_member_on_its_user_topic_and_the_chat_topic(relay, broker):
    # given
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = group_chat(alice, bob, carol)
    with phone(broker, bob, f"chat/users/{bob.id}", f"chat/chats/{cid}") as bob_phone, \
         phone(broker, carol, f"chat/users/{carol.id}") as carol_phone:
        # when
        sent = [send_message(alice, cid, f"m{i}") for i in range(5)]

        # then
        bob_phone.wait_for(5, topic=f"chat/users/{bob.id}")
        bob_phone.wait_for(5, topic=f"chat/chats/{cid}")
        carol_phone.wait_for(5, topic=f"chat/users/{carol.id}")
        for probe, topic in [
            (bob_phone, f"chat/users/{bob.id}"),
            (bob_phone, f"chat/chats/{cid}"),
            (carol_phone, f"chat/users/{carol.id}"),
        ]:
            events = [json.loads(p) for p in probe.messages_on(topic)]
            assert [e["type"] for e in events] == ["message.created"] * 5
            assert [e["data"] for e in events] == sent  # same object as HTTP, in seq order
            assert all(e["chat"] == cid and e["ts"] for e in events)


def test_the_author_s_other_devices_receive_its_messages(relay, broker):
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    tablet = login(alice)
    with phone(broker, tablet, f"chat/users/{alice.id}") as tablet_phone:
        sent = send_message(alice, cid, "from my phone")
        tablet_phone.wait_for(1)
        assert messages_in(tablet_phone.messages) == [sent]


def test_a_member_added_can_subscribe_when_the_add_returns_and_gets_later_messages(relay, broker, broker_kind):
    # given
    alice, bob, dave = make_user(), make_user(), make_user()
    cid = group_chat(alice, bob)
    send_message(alice, cid, "before dave")
    with phone(broker, dave, f"chat/users/{dave.id}") as dave_phone:
        # when
        assert alice.client.post(f"/chats/{cid}/users/{dave.id}/").status_code == 201
        # then: the grant is in force when the answer comes (on Mosquitto it disconnects
        # dave's phone once, which reconnects with its session; RabbitMQ asks Django at
        # the SUBSCRIBE, nobody is disconnected)
        if broker_kind == "mosquitto":
            assert dave_phone.wait_reconnected(after=1, timeout=10)
        assert dave_phone.subscribe(f"chat/chats/{cid}") == 1
        after = send_message(alice, cid, "after dave")
        dave_phone.wait_for(1, topic=f"chat/chats/{cid}")
        dave_phone.wait_for(2, topic=f"chat/users/{dave.id}")  # member.added, then the message
        types = [e["type"] for e in payloads(dave_phone.messages) if e["chat"] == cid]
        assert "member.added" in types
        assert messages_in(dave_phone.messages, cid) == [after]


def test_friend_events_reach_both_users_topics(relay, broker):
    alice, bob = make_user(), make_user()
    with phone(broker, bob, f"chat/users/{bob.id}") as bob_phone:
        alice.client.post(f"/accounts/{alice.id}/friends/{bob.id}/")
        bob.client.post(f"/accounts/{bob.id}/friends/{alice.id}/")
        bob_phone.wait_for(2)
        events = payloads(bob_phone.messages)
        assert [(e["type"], e["data"]["user"]["id"]) for e in events] == [
            ("friend.requested", alice.id),
            ("friend.accepted", alice.id),
        ]


# --- revocation -------------------------------------------------------------------------


def test_logout_disconnects_the_device_at_once_and_its_mqtt_credentials_stop_working(relay, broker):
    # given: alice on two devices, both connected
    alice = make_user()
    tablet = login(alice)
    phone_probe = MqttProbe(broker.host, broker.port)
    tablet_probe = MqttProbe(broker.host, broker.port)
    try:
        assert phone_probe.connect(**alice.mqtt) == 0
        assert tablet_probe.connect(**tablet.mqtt) == 0

        # when
        assert alice.client.post("/accounts/logout/").status_code == 204

        # then: the phone is cut off and cannot come back; the tablet is untouched
        assert phone_probe.wait_disconnected(timeout=5)
        assert phone_probe.connect(**alice.mqtt) != 0
        assert not tablet_probe.disconnected.is_set()
        assert tablet.client.get("/accounts/me/").status_code == 200
    finally:
        phone_probe.close()
        tablet_probe.close()


def test_a_member_removed_while_offline_receives_nothing_sent_after_removal(relay, broker):
    # given: bob has a persistent session subscribed to the chat, and goes offline
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = group_chat(alice, bob, carol)
    with phone(broker, bob, f"chat/users/{bob.id}", f"chat/chats/{cid}") as bob_phone:
        bob_phone.disconnect()
        assert bob_phone.wait_disconnected()
    before = send_message(alice, cid, "while bob is offline")

    # when: he is kicked while offline, and the chat goes on
    assert alice.client.delete(f"/chats/{cid}/users/{bob.id}/").status_code == 204
    after = send_message(alice, cid, "after bob left")
    send_message(carol, cid, "also after")
    outbox_drained()

    # then: back online with his session, he gets the removal and nothing after it
    with phone(broker, bob) as bob_phone:
        bob_phone.wait_for(2, topic=f"chat/users/{bob.id}")
        bob_phone.expect_nothing(1.0)
        received = payloads(bob_phone.messages)
        contents = [e["data"].get("content") for e in received if e["type"] == "message.created"]
        assert after["content"] not in contents
        assert "also after" not in contents
        assert before["content"] in contents  # sent while he was still a member
        assert any(e["type"] == "member.removed" and e["data"]["member"]["id"] == bob.id for e in received)
        assert bob_phone.refuses_subscribe(f"chat/chats/{cid}")


def test_a_kicked_member_online_stops_receiving_at_once(relay, broker):
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    with phone(broker, bob, f"chat/users/{bob.id}", f"chat/chats/{cid}") as bob_phone:
        alice.client.delete(f"/chats/{cid}/users/{bob.id}/")
        send_message(alice, cid, "not for bob")
        outbox_drained()
        # the removal itself reaches him (after the reconnect the revocation forces)...
        wait_until(
            lambda: any(e["type"] == "member.removed" for e in payloads(bob_phone.messages)),
            10, "member.removed",
        )
        # ...and nothing sent after it, on any topic
        bob_phone.expect_nothing(0.5)
        assert "not for bob" not in [m["content"] for m in messages_in(bob_phone.messages)]


# --- the broker failing -----------------------------------------------------------------


@pytest.mark.slow
def test_broker_frozen_posts_still_answer_and_everything_arrives_in_order_after(relay, broker):
    # given
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    with phone(broker, bob, f"chat/users/{bob.id}") as bob_phone:
        broker.freeze()
        try:
            # when
            started = time.monotonic()
            sent = [send_message(alice, cid, f"frozen {i}") for i in range(20)]
            elapsed = time.monotonic() - started
        finally:
            broker.thaw()

        # then: the POSTs never waited for the broker (its ack timeout alone is 10 s)
        assert elapsed < 5, elapsed
        wait_until(lambda: len(messages_in(bob_phone.messages, cid)) >= 20, 40, "all 20 messages")
        assert messages_in(bob_phone.messages, cid) == sent


@pytest.mark.slow
def test_broker_restarted_queued_messages_reach_offline_sessions_in_order(relay, broker):
    # given: bob is offline with a persistent session
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    with phone(broker, bob, f"chat/users/{bob.id}") as bob_phone:
        bob_phone.disconnect()
        assert bob_phone.wait_disconnected()
    early = [send_message(alice, cid, f"early {i}") for i in range(5)]
    outbox_drained()

    # when: the broker restarts (SIGTERM: it saves its state), and more is sent meanwhile
    broker.stop()
    try:
        late = [send_message(alice, cid, f"late {i}") for i in range(5)]
    finally:
        broker.start()
    outbox_drained(30)

    # then
    with phone(broker, bob) as bob_phone:
        wait_until(lambda: len(messages_in(bob_phone.messages, cid)) >= 10, 20, "10 messages")
        assert messages_in(bob_phone.messages, cid) == early + late


@pytest.mark.slow
def test_broker_killed_nothing_acknowledged_is_lost(relay, broker):
    # given
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)

    # when: the broker dies without saving anything, and messages keep coming
    broker.kill()
    try:
        sent = [send_message(alice, cid, f"during outage {i}") for i in range(10)]
    finally:
        broker.start()

    # then: the relay publishes them all once the broker is back...
    outbox_drained(30)
    # ...and a phone that reconnects (subscribe, then fetch after its last id, then drop
    # duplicates) has every one of them, in order
    with phone(broker, bob, f"chat/users/{bob.id}") as bob_phone:
        fetched = bob.client.get(f"/chats/{cid}/messages/?after=0").json()["results"]
        more = send_message(alice, cid, "after the outage")
        bob_phone.wait_for(1, topic=f"chat/users/{bob.id}")
        seen = {m["id"]: m for m in fetched + messages_in(bob_phone.messages, cid)}
        assert [seen[k]["content"] for k in sorted(seen)] == [m["content"] for m in sent + [more]]
