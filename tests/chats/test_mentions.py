"""Mentions: `@username` and `@all`, on messages, in the chat list, and their cost."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chats.mentions import names_in
from chats.models import Membership, Mention
from chatserver.models import OutboxEvent
from tests.support.factories import group_chat, make_user, send_message
from tests.support.mqtt import MqttProbe
from tests.support.stack import wait_until


def chat_list(user):
    return {c["id"]: c for c in user.client.get(f"/accounts/{user.id}/chats/").json()["results"]}


@pytest.fixture
def team(db):
    alice, bob, carol = make_user("alice"), make_user("Bob.B"), make_user("carol")
    return alice, bob, carol, group_chat(alice, bob, carol)


def test_names_are_found_as_written_and_not_inside_addresses():
    assert names_in("hi @bob, @Carol. and @dave-") == {"bob", "carol.", "carol", "dave-", "dave"}
    assert names_in("mail bob@example.org or @x") == set()
    assert names_in("안녕@bob님") == {"bob"}


@pytest.mark.django_db
def test_a_member_named_is_mentioned_whatever_the_case_and_others_are_plain_text(team):
    alice, bob, carol, cid = team
    outsider = make_user("zed")

    message = send_message(alice, cid, "@bob.b and @CAROL, not @zed nor @alice nor @nobody")

    assert message["mentions"] == sorted([bob.id, carol.id])
    assert sorted(Mention.objects.values_list("user_id", flat=True)) == sorted([bob.id, carol.id])
    [(row)] = [json.loads(r.payload) for r in OutboxEvent.objects.order_by("id") if b"message.created" in r.payload.encode()]
    assert row["data"]["mentions"] == message["mentions"]
    assert outsider.id not in message["mentions"]


@pytest.mark.django_db
def test_all_mentions_everyone_from_the_owner_or_an_admin_only(team):
    alice, bob, carol, cid = team

    by_owner = send_message(alice, cid, "@all meeting")
    by_member = send_message(bob, cid, "@all meeting")
    Membership.objects.filter(chat_id=cid, user_id=bob.id).update(role="admin")
    by_admin = send_message(bob, cid, "@all meeting")
    direct = alice.client.post("/chats/", {"members": [bob.id]}, format="json").json()["id"]
    in_direct = send_message(alice, direct, "@all")

    assert by_owner["mentions"] == sorted([bob.id, carol.id])
    assert by_member["mentions"] == []  # plain text from a member
    assert by_admin["mentions"] == sorted([alice.id, carol.id])
    assert in_direct["mentions"] == []


@pytest.mark.django_db
def test_the_chat_list_counts_unread_mentions_until_read(team):
    # given
    alice, bob, carol, cid = team
    send_message(alice, cid, "@carol one")
    second = send_message(bob, cid, "@carol two")
    send_message(alice, cid, "no mention")
    deleted = send_message(alice, cid, "@carol gone")
    alice.client.patch(f"/chats/{cid}/messages/{deleted['id']}/", {"deleted": True}, format="json")

    # then
    assert chat_list(carol)[cid]["mention_count"] == 2
    assert chat_list(bob)[cid]["mention_count"] == 0
    # when carol reads up to the second: none left
    carol.client.patch(f"/chats/{cid}/users/{carol.id}/messages/{second['id']}/")
    assert chat_list(carol)[cid]["mention_count"] == 0
    assert chat_list(carol)[cid]["unread_count"] == 1


@pytest.mark.django_db
def test_editing_updates_the_mentions_and_deleting_drops_them(team):
    alice, bob, carol, cid = team
    message = send_message(alice, cid, "@bob.b look")

    edited = alice.client.patch(f"/chats/{cid}/messages/{message['id']}/", {"content": "@carol look"}, format="json")

    assert edited.json()["mentions"] == [carol.id]
    assert list(Mention.objects.values_list("user_id", flat=True)) == [carol.id]
    assert chat_list(bob)[cid]["mention_count"] == 0
    assert chat_list(carol)[cid]["mention_count"] == 1
    deleted = alice.client.patch(f"/chats/{cid}/messages/{message['id']}/", {"deleted": True}, format="json")
    assert deleted.json()["mentions"] == []
    assert not Mention.objects.exists()


@pytest.mark.django_db
def test_the_send_costs_no_statement_more_without_an_at_sign_and_two_with_a_mention(team, no_backpressure_probe):
    alice, bob, carol, cid = team
    send_message(alice, cid, "warm-up")

    counts = {}
    for name, content in [("plain", "hello"), ("at, no name", "a @ b"), ("no member", "hi @nobody"),
                          ("mention", "hi @carol"), ("all", "@all hi")]:
        with CaptureQueriesContext(connection) as queries:
            send_message(alice, cid, content, client_id=f"c-{name}")
        counts[name] = len(queries)

    # plain: the same 4 as without mentions (tests/chats/test_chats.py); '@' without a
    # name parses and asks nothing; a name: one lookup among the members, and one insert
    # when it is a member's (@all: the lookup reads every member instead)
    assert counts == {"plain": 4, "at, no name": 4, "no member": 5, "mention": 6, "all": 6}


@pytest.mark.django_db(transaction=True)
def test_a_phone_gets_the_message_with_its_mentions(relay, broker):
    # given
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    wait_until(lambda: not OutboxEvent.objects.exists(), 20, "the relay to drain the outbox")
    probe = MqttProbe(broker.host, broker.port)
    assert probe.connect(**bob.mqtt) == 0
    assert probe.subscribe(f"chat/users/{bob.id}") == 1
    try:
        # when
        sent = send_message(alice, cid, f"@{bob.username} hi")

        # then
        [received] = probe.wait_for(1)
        event = json.loads(received.payload)
        assert (event["type"], event["data"]) == ("message.created", sent)
        assert event["data"]["mentions"] == [bob.id]
    finally:
        probe.close()
