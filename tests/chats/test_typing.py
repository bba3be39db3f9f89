"""Typing indicators, end to end: HTTP -> NOTIFY -> the relay process -> the broker -> paho.

Nothing is stored: no outbox row, no table written; QoS 0, so offline sessions never get
it; at most one per member and chat per second.
"""

import json
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chats.models import Membership
from chats.services.typing import EXPIRES
from chatserver.broker_access import chat_topic, typing_topic
from chatserver.ephemeral import Gate
from chatserver.models import OutboxEvent
from tests.support.factories import group_chat, make_user
from tests.support.mqtt import MqttProbe, phone
from tests.support.stack import wait_until


def typing(user, cid, value=True):
    return user.client.post(f"/chats/{cid}/typing/", {"typing": value}, format="json")


def typing_events(probe, topic):
    return [json.loads(p) for p in probe.messages_on(topic) if b'"typing.updated"' in p]


def drained():
    wait_until(lambda: not OutboxEvent.objects.exists(), 20, "the relay to drain the outbox")


@pytest.mark.django_db(transaction=True)
def test_other_members_see_typing_within_a_second_and_outsiders_cannot_listen(relay, broker):
    # given
    alice, bob, eve = make_user(), make_user(), make_user()
    cid = group_chat(alice, bob)
    drained()
    topic = typing_topic(cid)
    with phone(broker, bob, topic, chat_topic(cid), f"chat/users/{bob.id}") as bob_phone, \
         phone(broker, eve) as eve_phone:
        assert eve_phone.refuses_subscribe(topic, qos=0)  # the broker refuses outsiders

        # when
        started = time.monotonic()
        response = typing(alice, cid)

        # then
        assert response.status_code == 204
        [received] = bob_phone.wait_for(1, timeout=1, topic=topic)
        assert time.monotonic() - started < 1
        assert received.qos == 0 and received.retain is False
        event = json.loads(received.payload)
        assert (event["type"], event["chat"], event["data"]) == (
            "typing.updated", cid, {"user": alice.id, "typing": True, "expires_in": EXPIRES}
        )
        assert "version" not in event
        # on the chat's typing topic only, not on the chat's topic nor user topics
        bob_phone.expect_nothing(0.3, topic=f"chat/users/{bob.id}")
        assert bob_phone.messages_on(chat_topic(cid)) == []
        assert eve_phone.messages == []
    assert not OutboxEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_typing_is_never_queued_for_an_offline_session_and_comes_again_after_a_resubscribe(relay, broker):
    # given: bob's phone, with a persistent session following the chat (QoS 1) and its
    # typing (QoS 0, as the contract says), went away
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    drained()
    with phone(broker, bob, chat_topic(cid), typing_topic(cid)):
        pass
    # when: alice types, then sends a message, while bob is away
    assert typing(alice, cid).status_code == 204
    assert alice.client.post(f"/chats/{cid}/messages/", {"content": "hi"}, format="json").status_code == 201
    drained()
    # then: back online, bob's session gives him the message (QoS 1) but not the typing
    probe = MqttProbe(broker.host, broker.port)
    try:
        assert probe.connect(clean_session=False, **bob.mqtt) == 0 and probe.session_present
        probe.wait_for(1, topic=chat_topic(cid))
        probe.expect_nothing(0.5)
        assert [(m.topic, json.loads(m.payload)["type"]) for m in probe.messages] == [
            (chat_topic(cid), "message.created")]
        # and subscribed again after the reconnect, as phones do, he sees alice type
        assert probe.subscribe(typing_topic(cid), qos=0) == 0
        assert typing(alice, cid, False).status_code == 204
        [stopped] = probe.wait_for(1, topic=typing_topic(cid))
        assert json.loads(stopped.payload)["data"]["typing"] is False
    finally:
        probe.close()


@pytest.mark.django_db(transaction=True)
def test_at_most_one_per_member_and_second_and_the_last_state_arrives(relay, broker):
    # given
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    drained()
    topic = typing_topic(cid)
    with phone(broker, bob, topic) as bob_phone:
        # when: alice's phone says typing five times and then stopped, all within the second
        started = time.monotonic()
        for _ in range(5):
            assert typing(alice, cid).status_code == 204
        assert typing(alice, cid, False).status_code == 204

        # then: the first at once, the stop when its second is up (not later), nothing else
        bob_phone.wait_for(2, timeout=3, topic=topic)
        assert 0.9 < time.monotonic() - started < 1.5
        bob_phone.expect_nothing(1.2, topic=topic)
        assert [e["data"]["typing"] for e in typing_events(bob_phone, topic)] == [True, False]


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["restricted", None])
def test_restricted_members_and_outsiders_cannot_say_they_type(role):
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    if role:
        Membership.objects.filter(chat_id=cid, user_id=bob.id).update(role=role)
    else:
        Membership.objects.filter(chat_id=cid, user_id=bob.id).delete()

    response = typing(bob, cid)

    assert response.status_code == (403 if role else 404)
    assert response.json()["error"]["code"] == ("cannot_post" if role else "chat_not_found")


@pytest.mark.django_db
@pytest.mark.parametrize("body", [{}, {"typing": "yes"}, {"typing": 1}, {"typing": None}])
def test_bad_bodies_are_400(body):
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)

    response = alice.client.post(f"/chats/{cid}/typing/", body, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.django_db
def test_typing_writes_nothing_and_costs_three_statements():
    # given
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    OutboxEvent.objects.all().delete()

    # when
    with CaptureQueriesContext(connection) as queries:
        assert typing(alice, cid).status_code == 204

    # then: the token, the membership, the NOTIFY (besides the test's own savepoints)
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 3, statements
    assert "pg_notify" in statements[-1]
    assert not any(s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")) for s in statements)
    assert not OutboxEvent.objects.exists()


def test_the_gate_passes_one_per_second_and_holds_a_change_until_its_second_is_up():
    gate = Gate(every=1.0, max_age=2.0)

    def note(state, key="typing:1:2"):
        return json.dumps({"topic": "chat/chats/1/typing", "key": key, "state": state, "sent": time.time(),
                           "event": f'{{"s":"{state}"}}'})

    assert gate.receive(note("1"), now=10.0) == [("chat/chats/1/typing", b'{"s":"1"}')]
    assert gate.receive(note("1"), now=10.2) == []  # a repeat within the second
    assert gate.receive(note("1", key="typing:1:3"), now=10.2) != []  # another member
    assert gate.receive(note("0"), now=10.5) == []  # a change: held
    assert gate.next_due_in(now=10.5) == pytest.approx(0.5)
    assert gate.due(now=10.9) == []
    assert gate.due(now=11.0) == [("chat/chats/1/typing", b'{"s":"0"}')]
    assert gate.due(now=11.5) == []
    # typing again, then back to the state last published within the second: nothing held
    assert gate.receive(note("1"), now=11.2) == []
    assert gate.receive(note("0"), now=11.3) == []
    assert gate.due(now=12.5) == []
    # a stale notification (a relay that stood by) is dropped
    stale = json.dumps({"topic": "chat/chats/1/typing", "key": "k", "state": "1", "sent": time.time() - 5, "event": "{}"})
    assert gate.receive(stale, now=20.0) == []
    with pytest.raises(ValueError):
        gate.receive("not json")


def test_the_relay_publishes_ephemeral_events_to_event_topics_only(caplog):
    from chatserver.relay import Relay

    relay = Relay()  # not connected: a refused publish never reaches the broker
    relay.publish_ephemeral([("chat/presence/5/chat-5-1", b"{}"), ("chat/chats/5/typing/x", b"{}")])

    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        "ephemeral publish to chat/presence/5/chat-5-1 refused: not an event topic",
        "ephemeral publish to chat/chats/5/typing/x refused: not an event topic",
    ]
