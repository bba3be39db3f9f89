"""Reactions over HTTP (in-process) with their outbox rows, and over MQTT (relay, paho)."""

import json
from urllib.parse import quote

import pytest

from chats.models import Membership, Message, Reaction
from chats.services import reactions
from chatserver.models import OutboxEvent
from tests.support.factories import group_chat, make_user, queued_events, send_message
from tests.support.mqtt import MqttProbe
from tests.support.stack import wait_until

THUMBS, HEART = "👍", "❤️"


def react(user, cid, mid, emoji, method="put"):
    return getattr(user.client, method)(f"/chats/{cid}/messages/{mid}/reactions/{quote(emoji)}/")


@pytest.fixture
def chat(db):
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = group_chat(alice, bob, carol)
    message = send_message(alice, cid)
    OutboxEvent.objects.all().delete()
    return alice, bob, carol, cid, message


def test_a_reaction_is_on_the_message_for_everyone_and_the_author_is_told(chat):
    # given
    alice, bob, carol, cid, message = chat

    # when
    response = react(bob, cid, message["id"], THUMBS)

    # then
    assert response.status_code == 200
    body = response.json()
    assert body["reactions"] == [{"emoji": THUMBS, "count": 1, "user_ids": [bob.id]}]
    assert body["version"] == message["version"] + 1
    [(updated, updated_event), (told, told_event)] = queued_events()
    assert updated_event["type"] == "message.updated"
    assert updated_event["data"] == body
    assert updated_event["version"] == body["version"]
    assert sorted(updated.user_ids) == sorted([alice.id, bob.id, carol.id]) and updated.chat_id == cid
    assert told_event["type"] == "reaction.added"
    assert told_event["data"] == {"chat": cid, "message": message["id"], "user": bob.id, "emoji": THUMBS}
    assert (told.user_ids, told.chat_id) == ([alice.id], None)
    # and every read shows them
    [listed] = [m for m in carol.client.get(f"/chats/{cid}/messages/").json()["results"] if m["id"] == message["id"]]
    assert listed["reactions"] == body["reactions"]
    synced = carol.client.post("/chats/sync/", {"chats": {str(cid): message["version"]}}, format="json").json()
    assert synced["changed"][0]["messages"][0]["reactions"] == body["reactions"]


def test_reactions_count_per_emoji_in_the_order_first_used(chat):
    alice, bob, carol, cid, message = chat

    react(bob, cid, message["id"], THUMBS)
    react(carol, cid, message["id"], HEART)
    react(carol, cid, message["id"], THUMBS)
    last = react(alice, cid, message["id"], THUMBS)

    assert last.json()["reactions"] == [
        {"emoji": THUMBS, "count": 3, "user_ids": [bob.id, carol.id, alice.id]},
        {"emoji": HEART, "count": 1, "user_ids": [carol.id]},
    ]
    # the author reacting to its own message tells nobody in particular
    assert [e["type"] for _, e in queued_events()].count("reaction.added") == 3


def test_put_twice_is_one_reaction_and_tells_nobody_again(chat):
    _, bob, _, cid, message = chat
    first = react(bob, cid, message["id"], THUMBS).json()
    OutboxEvent.objects.all().delete()

    again = react(bob, cid, message["id"], THUMBS)

    assert again.status_code == 200
    assert again.json() == first
    assert Reaction.objects.count() == 1
    assert not OutboxEvent.objects.exists()


def test_the_heart_with_or_without_its_presentation_selector_is_one_emoji(chat):
    _, bob, _, cid, message = chat

    react(bob, cid, message["id"], "\u2764")
    body = react(bob, cid, message["id"], "\u2764\ufe0f").json()

    assert body["reactions"] == [{"emoji": HEART, "count": 1, "user_ids": [bob.id]}]


def test_delete_takes_it_back_and_deleting_a_missing_one_is_204_and_changes_nothing(chat):
    # given
    alice, bob, _, cid, message = chat
    react(bob, cid, message["id"], THUMBS)
    OutboxEvent.objects.all().delete()

    # when
    removed = react(bob, cid, message["id"], THUMBS, "delete")

    # then: members see it gone; the author is not told of a take-back
    assert removed.status_code == 204
    [(row, event)] = queued_events()
    assert event["type"] == "message.updated" and event["data"]["reactions"] == []
    assert Reaction.objects.count() == 0
    OutboxEvent.objects.all().delete()
    again = react(bob, cid, message["id"], THUMBS, "delete")
    assert again.status_code == 204
    assert not OutboxEvent.objects.exists()


@pytest.mark.parametrize("emoji", ["x", "👍👍", "🦄", "%20", "thumbs"])
def test_anything_off_the_list_is_400_and_writes_nothing(chat, emoji):
    _, bob, _, cid, message = chat

    response = react(bob, cid, message["id"], emoji)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert list(error["fields"]) == ["emoji"]
    assert Reaction.objects.count() == 0 and not OutboxEvent.objects.exists()


def test_who_may_not_react(chat):
    # given
    alice, bob, carol, cid, message = chat
    Membership.objects.filter(chat_id=cid, user_id=carol.id).update(role="restricted")
    outsider = make_user()
    other = group_chat(outsider, make_user())
    OutboxEvent.objects.all().delete()

    # then
    assert react(carol, cid, message["id"], THUMBS).json()["error"]["code"] == "cannot_post"
    assert react(outsider, cid, message["id"], THUMBS).json()["error"]["code"] == "chat_not_found"
    assert react(bob, cid, 10**9, THUMBS).json()["error"]["code"] == "message_not_found"
    assert react(outsider, other, message["id"], THUMBS).json()["error"]["code"] == "message_not_found"
    assert Reaction.objects.count() == 0 and not OutboxEvent.objects.exists()


def test_a_deleted_message_loses_its_reactions_and_takes_no_more(chat):
    alice, bob, _, cid, message = chat
    react(bob, cid, message["id"], THUMBS)

    deleted = alice.client.patch(f"/chats/{cid}/messages/{message['id']}/", {"deleted": True}, format="json")

    assert deleted.json()["reactions"] == []
    assert Reaction.objects.count() == 0
    refused = react(bob, cid, message["id"], THUMBS)
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "message_deleted")


def test_user_ids_are_capped_and_the_count_is_exact(chat, monkeypatch):
    alice, bob, carol, cid, message = chat
    monkeypatch.setattr(reactions, "USER_IDS_SHOWN", 2)

    for user in (alice, bob, carol):
        body = react(user, cid, message["id"], THUMBS).json()

    assert body["reactions"] == [{"emoji": THUMBS, "count": 3, "user_ids": [alice.id, bob.id]}]


@pytest.mark.django_db(transaction=True)
def test_a_member_s_phone_and_the_author_s_phone_get_the_exact_events(relay, broker):
    # given
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    message = send_message(alice, cid)
    wait_until(lambda: not OutboxEvent.objects.exists(), 20, "the relay to drain the outbox")
    alice_phone = MqttProbe(broker.host, broker.port)
    assert alice_phone.connect(**alice.mqtt) == 0
    assert alice_phone.subscribe(f"chat/users/{alice.id}") == 1
    assert alice_phone.subscribe(f"chat/chats/{cid}") == 1
    try:
        # when
        body = react(bob, cid, message["id"], THUMBS).json()

        # then
        alice_phone.wait_for(3)
        on_user = [json.loads(p) for p in alice_phone.messages_on(f"chat/users/{alice.id}")]
        on_chat = [json.loads(p) for p in alice_phone.messages_on(f"chat/chats/{cid}")]
        assert [(e["type"], e["data"]) for e in on_user] == [
            ("message.updated", body),
            ("reaction.added", {"chat": cid, "message": message["id"], "user": bob.id, "emoji": THUMBS}),
        ]
        assert [(e["type"], e["version"], e["data"]) for e in on_chat] == [("message.updated", body["version"], body)]
        assert body["reactions"] == [{"emoji": THUMBS, "count": 1, "user_ids": [bob.id]}]
    finally:
        alice_phone.close()
    assert Message.objects.get(id=message["id"]).reactions == body["reactions"]
