"""Edits, deletes, replies, read and delivered pointers, receipts, catch-up (in-process)."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chats.shapes import DELETED_CONTENT
from chats.models import Membership, Message
from chatserver.models import OutboxEvent
from tests.support.factories import make_user

pytestmark = pytest.mark.django_db


def post(client, path, body=None):
    return client.post(path, body, format="json")


def patch(client, path, body=None):
    return client.patch(path, body, format="json")


def send(user, cid, content="hi", **extra):
    response = post(user.client, f"/chats/{cid}/messages/", {"content": content, **extra})
    assert response.status_code == 201, response.content
    return response.json()


def last_event():
    event = OutboxEvent.objects.exclude(payload="").order_by("id").last()
    return event, json.loads(event.payload)


@pytest.fixture
def trio():
    owner, admin, member = make_user(), make_user(), make_user()
    cid = post(owner.client, "/chats/", {"members": [admin.id, member.id], "name": "t"}).json()["id"]
    Membership.objects.filter(chat_id=cid, user_id=admin.id).update(role="admin")
    return cid, owner, admin, member


# --- edit and delete --------------------------------------------------------------------


def test_the_author_edits_and_members_get_message_updated(trio):
    cid, owner, admin, member = trio
    message = send(member, cid, "helo")

    response = patch(member.client, f"/chats/{cid}/messages/{message['id']}/", {"content": "hello"})

    assert response.status_code == 200
    body = response.json()
    assert body["content"] == "hello"
    assert body["edited_at"] is not None
    assert body["seq"] == message["seq"]
    assert body["version"] > message["version"]
    event, payload = last_event()
    assert payload["type"] == "message.updated"
    assert payload["data"] == body
    assert payload["version"] == body["version"]
    assert sorted(event.user_ids) == sorted([owner.id, admin.id, member.id])


@pytest.mark.parametrize("editor", ["owner", "admin"])
def test_nobody_else_edits_not_even_the_owner(trio, editor):
    cid, owner, admin, member = trio
    message = send(member, cid, "mine")
    before = OutboxEvent.objects.count()
    actor = {"owner": owner, "admin": admin}[editor]

    response = patch(actor.client, f"/chats/{cid}/messages/{message['id']}/", {"content": "theirs"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_author"
    assert Message.objects.get(id=message["id"]).content == "mine"
    assert OutboxEvent.objects.count() == before


def test_soft_delete_keeps_the_row_and_replaces_the_content(trio):
    cid, owner, admin, member = trio
    message = send(member, cid, "regret")

    response = patch(member.client, f"/chats/{cid}/messages/{message['id']}/", {"deleted": True})
    again = patch(member.client, f"/chats/{cid}/messages/{message['id']}/", {"deleted": True})
    edit = patch(member.client, f"/chats/{cid}/messages/{message['id']}/", {"content": "back"})

    assert response.status_code == 200
    body = response.json()
    assert body["deleted"] is True
    assert body["content"] == DELETED_CONTENT
    assert body["unread_count"] == 0
    assert again.status_code == 200 and again.json() == body
    assert edit.status_code == 409
    history = owner.client.get(f"/chats/{cid}/messages/").json()["results"]
    assert [(m["id"], m["deleted"], m["content"]) for m in history] == [(message["id"], True, DELETED_CONTENT)]


def test_admins_delete_others_messages_in_groups_members_do_not(trio):
    cid, owner, admin, member = trio
    by_owner = send(owner, cid, "owner's")
    by_member = send(member, cid, "member's")

    refused = patch(member.client, f"/chats/{cid}/messages/{by_owner['id']}/", {"deleted": True})
    allowed = patch(admin.client, f"/chats/{cid}/messages/{by_member['id']}/", {"deleted": True})

    assert refused.status_code == 403
    assert allowed.status_code == 200
    assert Message.objects.get(id=by_owner["id"]).deleted is False


def test_in_a_direct_chat_only_the_author_deletes():
    alice, bob = make_user(), make_user()
    cid = post(alice.client, "/chats/", {"members": [bob.id]}).json()["id"]
    message = send(alice, cid, "x")

    assert patch(bob.client, f"/chats/{cid}/messages/{message['id']}/", {"deleted": True}).status_code == 403


@pytest.mark.parametrize(
    "body", [{}, {"content": ""}, {"content": 5}, {"deleted": False}, {"content": "x", "deleted": True}, {"deleted": "maybe"}]
)
def test_bad_update_bodies_are_400(trio, body):
    cid, owner, admin, member = trio
    message = send(member, cid, "keep")

    response = patch(member.client, f"/chats/{cid}/messages/{message['id']}/", body)

    assert response.status_code == 400
    assert Message.objects.get(id=message["id"]).content == "keep"


def test_updates_of_foreign_or_unknown_messages_are_404(trio):
    cid, owner, admin, member = trio
    other = post(owner.client, "/chats/", {"members": [member.id], "name": "other"}).json()["id"]
    elsewhere = send(owner, other, "elsewhere")
    outsider = make_user()

    wrong_chat = patch(owner.client, f"/chats/{cid}/messages/{elsewhere['id']}/", {"deleted": True})
    unknown = patch(owner.client, f"/chats/{cid}/messages/999999/", {"deleted": True})
    not_member = patch(outsider.client, f"/chats/{other}/messages/{elsewhere['id']}/", {"deleted": True})

    assert wrong_chat.status_code == 404
    assert unknown.status_code == 404
    assert not_member.status_code == 404 and not_member.json()["error"]["code"] == "chat_not_found"
    assert Message.objects.get(id=elsewhere["id"]).deleted is False


# --- replies ----------------------------------------------------------------------------


def test_a_reply_carries_a_preview_that_follows_edits_and_deletion(trio):
    cid, owner, admin, member = trio
    original = send(owner, cid, "x" * 150)

    reply = send(member, cid, "agreed", reply_to=original["id"])
    patch(owner.client, f"/chats/{cid}/messages/{original['id']}/", {"content": "edited"})
    after_edit = owner.client.get(f"/chats/{cid}/messages/").json()["results"][-1]
    patch(owner.client, f"/chats/{cid}/messages/{original['id']}/", {"deleted": True})
    after_delete = owner.client.get(f"/chats/{cid}/messages/").json()["results"][-1]

    assert reply["reply_to"] == original["id"]
    assert reply["reply_preview"] == {"id": original["id"], "author": owner.id, "content": "x" * 100, "deleted": False}
    assert after_edit["reply_preview"]["content"] == "edited"
    assert after_delete["reply_preview"] == {
        "id": original["id"], "author": owner.id, "content": DELETED_CONTENT, "deleted": True,
    }


# --- read and delivered pointers --------------------------------------------------------


def pointer(user, cid, mid, kind="messages"):
    return patch(user.client, f"/chats/{cid}/users/{user.id}/{kind}/{mid}/")


def test_read_pointer_moves_forward_only_and_drives_unread_counts(trio):
    cid, owner, admin, member = trio
    ids = [send(owner, cid, f"m{i}")["id"] for i in range(4)]

    forward = pointer(member, cid, ids[2])
    event, payload = last_event()
    back = pointer(member, cid, ids[0])
    events_after_back = OutboxEvent.objects.count()

    assert forward.status_code == 200
    assert forward.json()["last_read_message_id"] == ids[2]
    assert forward.json()["last_delivered_message_id"] == ids[2]
    assert payload["type"] == "read.updated"
    assert payload["data"]["user"] == member.id
    assert payload["data"]["last_read_message_id"] == ids[2]
    assert event.chat_id == cid and member.id in event.user_ids and owner.id in event.user_ids
    assert back.json()["last_read_message_id"] == ids[2]
    assert OutboxEvent.objects.count() == events_after_back  # nothing moved, nothing told
    history = owner.client.get(f"/chats/{cid}/messages/").json()["results"]
    assert [m["unread_count"] for m in history] == [1, 1, 1, 2]  # admin everywhere, member past m2
    chats = member.client.get(f"/accounts/{member.id}/chats/").json()["results"]
    assert chats[0]["unread_count"] == 1


def test_nobody_moves_another_member_s_pointer(trio):
    cid, owner, admin, member = trio
    mid = send(owner, cid)["id"]
    outsider = make_user()

    response = patch(owner.client, f"/chats/{cid}/users/{member.id}/messages/{mid}/")
    foreign = patch(outsider.client, f"/chats/{cid}/users/{outsider.id}/messages/{mid}/")

    assert response.status_code == 403
    assert foreign.status_code == 404
    assert Membership.objects.get(chat_id=cid, user_id=member.id).last_read_seq == 0


def test_deleted_messages_do_not_count_as_unread(trio):
    cid, owner, admin, member = trio
    send(owner, cid, "one")
    two = send(owner, cid, "two")
    patch(owner.client, f"/chats/{cid}/messages/{two['id']}/", {"deleted": True})

    chats = member.client.get(f"/accounts/{member.id}/chats/").json()["results"]

    assert chats[0]["unread_count"] == 1


def test_members_count_only_for_messages_sent_while_they_were_in(trio):
    cid, owner, admin, member = trio
    old = send(owner, cid, "before the newcomer")
    newcomer = make_user()
    post(owner.client, f"/chats/{cid}/users/{newcomer.id}/")
    new = send(owner, cid, "after")

    history = owner.client.get(f"/chats/{cid}/messages/").json()["results"]
    counts = {m["id"]: m["unread_count"] for m in history}

    assert counts[old["id"]] == 2  # admin, member; not the newcomer
    assert counts[new["id"]] == 3


def test_direct_chat_shows_sent_delivered_read_through_the_pointers():
    alice, bob = make_user(), make_user()
    cid = post(alice.client, "/chats/", {"members": [bob.id]}).json()["id"]
    first, second = send(alice, cid, "1"), send(alice, cid, "2")

    def bob_pointers():
        members = alice.client.get(f"/chats/{cid}/users/").json()
        return next((m["last_delivered_message_id"], m["last_read_message_id"]) for m in members if m["id"] == bob.id)

    assert bob_pointers() == (None, None)  # both sent, neither delivered
    pointer(bob, cid, second["id"], kind="delivered")
    assert bob_pointers() == (second["id"], None)  # both delivered
    pointer(bob, cid, first["id"])
    assert bob_pointers() == (second["id"], first["id"])  # first read, second delivered


def test_with_read_receipts_off_others_do_not_see_the_pointer(trio):
    cid, owner, admin, member = trio
    assert patch(member.client, "/accounts/me/", {"read_receipts": False}).status_code == 200
    mid = send(owner, cid)["id"]

    pointer(member, cid, mid)
    event, payload = last_event()

    assert event.user_ids == [member.id] and event.chat_id is None  # only its own devices
    history = owner.client.get(f"/chats/{cid}/messages/").json()["results"]
    assert history[-1]["unread_count"] == 2  # still counted as unread for others
    assert member.client.get(f"/accounts/{member.id}/chats/").json()["results"][0]["unread_count"] == 0


def test_pointer_to_an_unknown_message_is_404(trio):
    cid, owner, admin, member = trio
    assert pointer(member, cid, 999999).status_code == 404


# --- catch-up ---------------------------------------------------------------------------


def test_sync_returns_everything_changed_since_the_versions_given():
    alice, bob, carol = make_user(), make_user(), make_user()
    quiet = post(alice.client, "/chats/", {"members": [bob.id]}).json()
    busy = post(alice.client, "/chats/", {"members": [bob.id, carol.id], "name": "busy"}).json()
    gone = post(carol.client, "/chats/", {"members": [bob.id], "name": "gone"}).json()
    kept = send(alice, busy["id"], "seen before going away")
    known = {str(quiet["id"]): quiet["version"], str(busy["id"]): kept["version"], str(gone["id"]): gone["version"]}
    # while bob is away:
    edited = send(carol, busy["id"], "typo")
    patch(carol.client, f"/chats/{busy['id']}/messages/{edited['id']}/", {"content": "fixed"})
    patch(alice.client, f"/chats/{busy['id']}/messages/{kept['id']}/", {"deleted": True})
    fresh = send(alice, busy["id"], "new")
    carol.client.delete(f"/chats/{gone['id']}/users/{bob.id}/")
    joined = post(carol.client, "/chats/", {"members": [bob.id, alice.id], "name": "joined"}).json()

    with CaptureQueriesContext(connection) as queries:
        response = post(bob.client, "/chats/sync/", {"chats": known})

    assert response.status_code == 200
    body = response.json()
    assert [c["id"] for c in body["changed"]] == [busy["id"]]
    changed = body["changed"][0]
    assert [(m["id"], m["content"]) for m in changed["messages"]] == [
        (edited["id"], "fixed"),
        (kept["id"], DELETED_CONTENT),
        (fresh["id"], "new"),
    ]
    assert changed["has_more"] is False
    assert changed["version"] == fresh["version"]
    assert {m["id"] for m in changed["members"]} == {alice.id, bob.id, carol.id}
    assert body["removed"] == [gone["id"]]
    assert [c["id"] for c in body["new"]] == [joined["id"]]
    assert len(queries) <= 6


def test_sync_pages_a_long_absence():
    alice, bob = make_user(), make_user()
    chat = post(alice.client, "/chats/", {"members": [bob.id]}).json()
    sent = [send(alice, chat["id"], f"m{i}") for i in range(5)]

    first = post(bob.client, "/chats/sync/", {"chats": {str(chat["id"]): chat["version"]}, "limit": 3}).json()
    page = first["changed"][0]
    second = post(bob.client, "/chats/sync/", {"chats": {str(chat["id"]): page["version"]}, "limit": 3}).json()

    assert [m["id"] for m in page["messages"]] == [m["id"] for m in sent[:3]]
    assert page["has_more"] is True
    rest = second["changed"][0]
    assert [m["id"] for m in rest["messages"]] == [m["id"] for m in sent[3:]]
    assert rest["has_more"] is False


@pytest.mark.parametrize(
    "body",
    [
        {}, {"chats": []}, {"chats": {"x": 1}}, {"chats": {"1": -1}}, {"chats": {"1": "a"}}, {"chats": {}, "limit": 0},
        # digits to str.isdigit that int() refuses, an id beyond BIGINT, and no id at all
        {"chats": {"\u00b2": 1}}, {"chats": {"\u0663": 1}}, {"chats": {str(2**63): 1}}, {"chats": {"0": 1}},
    ],
)
def test_sync_rejects_bad_bodies(body):
    response = post(make_user().client, "/chats/sync/", body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
