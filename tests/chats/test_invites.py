"""Invitations over HTTP (in-process) with their outbox rows, and over MQTT."""

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from chats.models import InviteAnswer, Message
from chatserver.models import OutboxEvent
from tests.support.factories import group_chat, make_user, queued_events
from tests.support.mqtt import MqttProbe
from tests.support.stack import wait_until

INVITE = {"title": "Chess, best of three", "url": "https://play.example.org/g/8f2k"}


def invite(user, cid, **invite_fields):
    return user.client.post(f"/chats/{cid}/messages/", {"type": "invite", "invite": {**INVITE, **invite_fields}},
                            format="json")


def answer(user, cid, mid, value):
    return user.client.post(f"/chats/{cid}/messages/{mid}/answer/", {"answer": value}, format="json")


@pytest.fixture
def chat(db):
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = group_chat(alice, bob, carol)
    sent = invite(alice, cid, expires_at="2999-01-01T18:00:00+02:00")
    assert sent.status_code == 201, sent.content
    OutboxEvent.objects.all().delete()
    return alice, bob, carol, cid, sent.json()


def test_an_invitation_is_a_message_of_type_invite(chat):
    _, _, carol, cid, sent = chat

    assert (sent["type"], sent["content"]) == ("invite", INVITE["title"])
    assert sent["invite"] == {**INVITE, "expires_at": "2999-01-01T16:00:00Z", "accepted": 0, "declined": 0,
                              "answers": []}
    [listed] = carol.client.get(f"/chats/{cid}/messages/").json()["results"]
    assert listed["invite"] == sent["invite"]


def test_members_answer_and_everyone_sees_the_answers(chat):
    # given
    alice, bob, carol, cid, sent = chat

    # when
    accepted = answer(bob, cid, sent["id"], "accept")
    declined = answer(carol, cid, sent["id"], "decline")

    # then
    assert accepted.status_code == 200
    body = declined.json()
    assert (body["invite"]["accepted"], body["invite"]["declined"]) == (1, 1)
    assert [(a["user"], a["answer"]) for a in body["invite"]["answers"]] == [(bob.id, "accept"), (carol.id, "decline")]
    assert body["version"] == accepted.json()["version"] + 1
    [(row, event), (_, second)] = queued_events()
    assert (event["type"], event["data"]) == ("message.updated", accepted.json())
    assert sorted(row.user_ids) == sorted([alice.id, bob.id, carol.id]) and row.chat_id == cid
    assert second["data"] == body
    synced = alice.client.post("/chats/sync/", {"chats": {str(cid): sent["version"]}}, format="json").json()
    assert synced["changed"][0]["messages"][0]["invite"] == body["invite"]


def test_answering_again_changes_the_answer_and_the_same_one_changes_nothing(chat):
    _, bob, _, cid, sent = chat
    answer(bob, cid, sent["id"], "accept")

    again = answer(bob, cid, sent["id"], "accept")
    assert len(queued_events()) == 1 and again.json()["invite"]["accepted"] == 1
    changed = answer(bob, cid, sent["id"], "decline").json()

    assert (changed["invite"]["accepted"], changed["invite"]["declined"]) == (0, 1)
    assert InviteAnswer.objects.get().answer == "decline" and len(queued_events()) == 2


def test_one_s_own_an_expired_or_a_deleted_invitation_and_other_messages_are_refused(chat):
    alice, bob, carol, cid, sent = chat
    text = alice.client.post(f"/chats/{cid}/messages/", {"content": "plain"}, format="json").json()
    soon = invite(alice, cid, expires_at=(timezone.now() + timedelta(seconds=30)).isoformat()).json()
    Message.objects.filter(id=soon["id"]).update(invite={**soon["invite"], "expires_at": "2020-01-01T00:00:00Z"})
    gone = invite(alice, cid).json()
    alice.client.patch(f"/chats/{cid}/messages/{gone['id']}/", {"deleted": True}, format="json")
    assert alice.client.patch(f"/chats/{cid}/users/{carol.id}/", {"role": "restricted"}, format="json").status_code == 200
    outsider = make_user()
    OutboxEvent.objects.all().delete()

    for user, mid, expected in [
        (alice, sent["id"], (409, "own_invitation")),
        (bob, soon["id"], (409, "invitation_expired")),
        (bob, gone["id"], (409, "message_deleted")),
        (bob, text["id"], (400, "not_an_invitation")),
        (carol, sent["id"], (403, "cannot_post")),
        (outsider, sent["id"], (404, "chat_not_found")),
        (bob, 10**12, (404, "message_not_found")),
    ]:
        refused = answer(user, cid, mid, "accept")
        assert (refused.status_code, refused.json()["error"]["code"]) == expected, (user, mid)
    bad = answer(bob, cid, sent["id"], "maybe")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "validation_error")
    assert not InviteAnswer.objects.exists() and not OutboxEvent.objects.exists()
    # a deleted invitation keeps its type and loses its invite
    [deleted] = [m for m in bob.client.get(f"/chats/{cid}/messages/").json()["results"] if m["id"] == gone["id"]]
    assert (deleted["type"], deleted["invite"], deleted["deleted"]) == ("invite", None, True)


@pytest.mark.parametrize("body, field", [
    ({"type": "invite", "invite": {"title": ""}}, "invite"),
    ({"type": "invite", "invite": {"title": "x" * 101}}, "invite"),
    ({"type": "invite", "invite": {"title": "\u3164"}}, "invite"),
    ({"type": "invite", "invite": {"title": "x", "url": "ftp://example.org/g"}}, "invite"),
    ({"type": "invite", "invite": {"title": "x", "url": "javascript:alert(1)"}}, "invite"),
    ({"type": "invite", "invite": {"title": "x", "expires_at": "2020-01-01T00:00:00Z"}}, "invite"),
    ({"type": "invite", "invite": {"title": "x", "colour": "red"}}, "invite"),
    ({"type": "invite"}, "invite"),
    ({"invite": {"title": "x"}, "content": "hi"}, "type"),
    ({"type": "poll", "content": "hi"}, "type"),
])
def test_bad_invitations_are_400_and_nothing_is_sent(chat, body, field):
    alice, _, _, cid, _ = chat
    count = Message.objects.count()

    refused = alice.client.post(f"/chats/{cid}/messages/", body, format="json")

    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "validation_error")
    assert list(refused.json()["error"]["fields"]) == [field]
    assert Message.objects.count() == count and not OutboxEvent.objects.exists()


def test_an_invitation_may_say_more_than_its_title(chat):
    alice, _, _, cid, _ = chat

    sent = alice.client.post(f"/chats/{cid}/messages/",
                             {"type": "invite", "invite": {"title": "Go"}, "content": "who's in?"}, format="json")

    assert (sent.json()["content"], sent.json()["invite"]["url"], sent.json()["invite"]["expires_at"]) == (
        "who's in?", None, None)


@pytest.mark.django_db(transaction=True)
def test_the_inviter_s_phone_sees_the_answer(relay, broker):
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    sent = invite(alice, cid).json()
    wait_until(lambda: not OutboxEvent.objects.exists(), 20, "the relay to drain the outbox")
    phone = MqttProbe(broker.host, broker.port)
    assert phone.connect(**alice.mqtt) == 0 and phone.subscribe(f"chat/users/{alice.id}") == 1
    try:
        body = answer(bob, cid, sent["id"], "accept").json()

        [received] = phone.wait_for(1)
        event = json.loads(received.payload)
        assert (event["type"], event["data"]) == ("message.updated", body)
        assert [(a["user"], a["answer"]) for a in event["data"]["invite"]["answers"]] == [(bob.id, "accept")]
    finally:
        phone.close()
