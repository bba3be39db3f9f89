"""Forwards over HTTP (in-process) with their outbox rows and files, and over MQTT."""

import io
import json
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test.utils import CaptureQueriesContext
from PIL import Image
from rest_framework.test import APIClient

from chats.models import Attachment, Message
from chatserver.models import OutboxEvent
from tests.support.factories import PASSWORD, group_chat, make_user
from tests.support.mqtt import MqttProbe
from tests.support.stack import wait_until


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path / "media"


def stored_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 60)).save(out, format="PNG")
    return out.getvalue()


def send(user, cid, **body):
    response = user.client.post(f"/chats/{cid}/messages/", body, format="json")
    return response


def forward(user, cid, mid, **extra):
    return send(user, cid, forward_of=mid, **extra)


def download(user, url):
    response = user.client.get(url)
    return response.status_code, (b"".join(response.streaming_content) if response.status_code == 200 else b"")


@pytest.fixture
def chats(db):
    alice, bob, carol = make_user(), make_user(), make_user()
    source, target = group_chat(alice, bob, name="source"), group_chat(bob, carol, name="target")
    return alice, bob, carol, source, target


def test_a_forward_shows_the_original_author_never_its_chat(chats):
    # given
    alice, bob, carol, source, target = chats
    original = send(alice, source, content=f"@{bob.username} the crag at 10").json()
    alice.client.patch("/accounts/me/", {"display_name": "Alice"}, format="json")
    OutboxEvent.objects.all().delete()

    # when
    response = forward(bob, target, original["id"])

    # then
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["chat"], body["author"], body["type"], body["content"]) == (target, bob.id, "text", original["content"])
    assert body["forwarded"] is True
    assert body["forwarded_from"] == {"id": alice.id, "username": alice.username, "display_name": "Alice"}
    # a forward's words mention nobody; nothing says where the original was
    assert body["mentions"] == [] and body["reply_to"] is None
    [(row, event)] = [(r, json.loads(r.payload)) for r in OutboxEvent.objects.order_by("id") if r.payload]
    assert (event["type"], event["data"]) == ("message.created", body)
    assert sorted(row.user_ids) == sorted([bob.id, carol.id]) and row.chat_id == target
    # and reads show it the same
    [listed] = carol.client.get(f"/chats/{target}/messages/").json()["results"]
    assert listed == {**body, "unread_count": listed["unread_count"]}


def test_a_forward_of_a_file_shares_its_bytes_and_has_its_own_links(chats, media_root,
                                                                   django_capture_on_commit_callbacks):
    # given
    alice, bob, carol, source, target = chats
    image = alice.client.post(f"/chats/{source}/messages/",
                              {"file": SimpleUploadedFile("crag.png", png(), content_type="image/png"),
                               "content": "the crag"}, format="multipart").json()
    files = stored_files(media_root)

    # when
    body = forward(bob, target, image["id"]).json()

    # then: no new file; the forward's paths are its own
    assert stored_files(media_root) == files
    assert (body["type"], body["content"]) == ("image", "the crag")
    assert body["attachment"] == {**image["attachment"], "url": f"/chats/{target}/messages/{body['id']}/attachment/",
                                  "thumbnail_url": f"/chats/{target}/messages/{body['id']}/attachment/thumbnail/"}
    assert download(carol, body["attachment"]["url"]) == (200, files[0].read_bytes())
    # carol is not in the source chat: the original's file stays closed to her
    assert download(carol, image["attachment"]["url"])[0] == 404
    # the original deleted (and alice gone from source): the forward's file and links still work
    with django_capture_on_commit_callbacks(execute=True):
        alice.client.patch(f"/chats/{source}/messages/{image['id']}/", {"deleted": True}, format="json")
        alice.client.delete(f"/chats/{source}/users/{alice.id}/")
    assert stored_files(media_root) == files
    assert download(carol, body["attachment"]["url"])[0] == 200
    link = carol.client.get(f"/chats/{target}/messages/{body['id']}/attachment/link/").json()
    assert APIClient().get(link["url"]).status_code == 200
    # the forward deleted too: nothing names the files, they go
    with django_capture_on_commit_callbacks(execute=True):
        bob.client.patch(f"/chats/{target}/messages/{body['id']}/", {"deleted": True}, format="json")
    assert stored_files(media_root) == [] and not Attachment.objects.exists()


def test_a_forward_of_a_forward_is_from_the_first_author_and_a_deleted_account_shows_none(chats):
    alice, bob, carol, source, target = chats
    original = send(alice, source, content="hi").json()
    once = forward(bob, target, original["id"]).json()

    twice = forward(carol, target, once["id"]).json()
    assert twice["forwarded_from"]["id"] == alice.id

    assert alice.client.delete("/accounts/me/", {"password": PASSWORD}, format="json").status_code == 204
    [_, shown] = carol.client.get(f"/chats/{target}/messages/").json()["results"]
    assert (shown["forwarded"], shown["forwarded_from"]) == (True, None)


def test_what_one_cannot_read_is_not_found_and_nothing_is_written(chats):
    # given: a message in a chat bob is not in, a deleted one, one that does not exist
    alice, bob, carol, source, target = chats
    secret = group_chat(alice, carol, name="secret")
    hidden = send(alice, secret, content="not for bob").json()
    gone = send(alice, source, content="gone").json()
    alice.client.patch(f"/chats/{source}/messages/{gone['id']}/", {"deleted": True}, format="json")
    count = Message.objects.count()
    OutboxEvent.objects.all().delete()

    # when / then: the same answer for all three
    for mid in (hidden["id"], gone["id"], 10**12):
        refused = forward(bob, target, mid)
        assert (refused.status_code, refused.json()["error"]["code"]) == (404, "message_not_found")
    # and to a chat one is not in: chat_not_found
    outsider_target = forward(bob, secret, send(bob, source, content="x").json()["id"])
    assert outsider_target.json()["error"]["code"] == "chat_not_found"
    assert Message.objects.count() == count + 1 and OutboxEvent.objects.count() == 1


@pytest.mark.parametrize("extra, field", [
    ({"content": "my words"}, "content"),
    ({"content": ""}, "content"),
    ({"type": "invite", "invite": {"title": "x"}}, "forward_of"),
])
def test_a_forward_takes_no_content_of_its_own(chats, extra, field):
    alice, bob, _, source, target = chats
    original = send(alice, source, content="hi").json()
    count = Message.objects.count()

    refused = forward(bob, target, original["id"], **extra)

    assert (refused.status_code, refused.json()["error"]["code"]) == (400, "validation_error")
    assert list(refused.json()["error"]["fields"]) == [field]
    assert Message.objects.count() == count


def test_a_forward_with_a_client_id_is_sent_once(chats):
    alice, bob, _, source, target = chats
    original = send(alice, source, content="hi").json()

    first = forward(bob, target, original["id"], client_id="f1")
    again = forward(bob, target, original["id"], client_id="f1")

    assert (first.status_code, again.status_code) == (201, 200) and again.json()["id"] == first.json()["id"]


def test_what_a_forward_and_an_invitation_cost_and_that_a_plain_send_costs_nothing_more(chats, no_backpressure_probe):
    alice, bob, _, source, target = chats
    original = send(alice, source, content="hi").json()
    send(bob, target, content="warm-up")

    with CaptureQueriesContext(connection) as plain:
        assert send(bob, target, content="plain", client_id="p1").status_code == 201
    with CaptureQueriesContext(connection) as forwarded:
        assert forward(bob, target, original["id"], client_id="f1").status_code == 201

    # plain: rate limit, the write (its outbox row and push job in it), savepoint and
    # release (as in test_chats; the token from the cache, checked by the write); a forward adds: the
    # client_id look-up, the original (read, then locked) and the forward's columns (no
    # device read: a refusal of what it reads confirms the device, and so does the write)
    with CaptureQueriesContext(connection) as invited:
        assert send(bob, target, type="invite", invite={"title": "chess"}, client_id="i1").status_code == 201

    assert len(plain) == 4, [q["sql"] for q in plain.captured_queries]
    assert len(forwarded) == 8, [q["sql"] for q in forwarded.captured_queries]
    # an invitation: its columns (the write checks the device, as for a plain one)
    assert len(invited) == 5, [q["sql"] for q in invited.captured_queries]


@pytest.mark.django_db(transaction=True)
def test_a_member_s_phone_gets_the_forward(relay, broker):
    alice, bob, carol = make_user(), make_user(), make_user()
    source, target = group_chat(alice, bob), group_chat(bob, carol)
    original = send(alice, source, content="hi").json()
    wait_until(lambda: not OutboxEvent.objects.exists(), 20, "the relay to drain the outbox")
    phone = MqttProbe(broker.host, broker.port)
    assert phone.connect(**carol.mqtt) == 0 and phone.subscribe(f"chat/users/{carol.id}") == 1
    try:
        body = forward(bob, target, original["id"]).json()

        [received] = phone.wait_for(1)
        event = json.loads(received.payload)
        assert (event["type"], event["data"]) == ("message.created", body)
        assert body["forwarded_from"]["username"] == alice.username
    finally:
        phone.close()


def test_deleting_the_original_s_chat_keeps_the_forward_s_file(chats, media_root, django_capture_on_commit_callbacks):
    alice, bob, carol, source, target = chats
    image = alice.client.post(f"/chats/{source}/messages/",
                              {"file": SimpleUploadedFile("crag.png", png(), content_type="image/png")},
                              format="multipart").json()
    body = forward(bob, target, image["id"]).json()
    files = stored_files(media_root)

    with django_capture_on_commit_callbacks(execute=True):
        assert alice.client.delete(f"/chats/{source}/").status_code == 204

    assert stored_files(media_root) == files
    assert download(carol, body["attachment"]["url"]) == (200, files[0].read_bytes())


def test_a_forwarded_invitation_is_a_new_one_without_answers(chats):
    alice, bob, carol, source, target = chats
    invite = send(alice, source, type="invite", invite={"title": "chess"}).json()
    bob.client.post(f"/chats/{source}/messages/{invite['id']}/answer/", {"answer": "accept"}, format="json")

    body = forward(bob, target, invite["id"]).json()

    assert (body["type"], body["author"], body["forwarded_from"]["id"]) == ("invite", bob.id, alice.id)
    assert body["invite"] == {"title": "chess", "url": None, "expires_at": None, "accepted": 0, "declined": 0,
                              "answers": []}
    assert carol.client.post(f"/chats/{target}/messages/{body['id']}/answer/", {"answer": "accept"},
                             format="json").json()["invite"]["accepted"] == 1
