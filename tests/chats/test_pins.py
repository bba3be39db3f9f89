"""Pinned and archived chats (one's own list) and pinned messages, over HTTP with their
outbox rows, and over MQTT (relay, paho)."""

import json

import pytest

from chats.models import Membership, Message
from chats.services import pins
from chatserver.models import OutboxEvent
from tests.support.factories import group_chat, login, make_user, queued_events, send_message
from tests.support.mqtt import MqttProbe
from tests.support.stack import wait_until


def own(user, cid, **body):
    return user.client.patch(f"/chats/{cid}/users/{user.id}/", body, format="json")


def chat_list(user, **query):
    response = user.client.get(f"/accounts/{user.id}/chats/", query)
    assert response.status_code == 200, response.content
    return [(c["id"], c["pinned"], c["archived"]) for c in response.json()["results"]]


# --- one's own list ---------------------------------------------------------------------


@pytest.mark.django_db
def test_pinned_chats_come_first_and_the_member_alone_sees_it():
    # given
    alice, bob = make_user(), make_user()
    first, second, third = (group_chat(alice, bob, name=n) for n in ("a", "b", "c"))
    OutboxEvent.objects.all().delete()

    # when
    response = own(alice, first, pinned=True)

    # then
    assert response.status_code == 200
    assert (response.json()["pinned"], response.json()["archived"]) == (True, False)
    assert chat_list(alice) == [(first, True, False), (third, False, False), (second, False, False)]
    assert chat_list(bob)[0] == (third, False, False)
    [(row, event)] = queued_events()
    assert (event["type"], event["data"], row.user_ids, row.chat_id) == (
        "chat_list.updated", {"chat": first, "pinned": True, "archived": False}, [alice.id], None
    )
    members = {m["id"]: m for m in alice.client.get(f"/chats/{first}/users/").json()}
    assert members[alice.id]["pinned"] is True and "pinned" not in members[bob.id]
    # pinning again changes nothing and tells nobody
    assert own(alice, first, pinned=True).status_code == 200
    assert len(queued_events()) == 1


@pytest.mark.django_db
def test_a_sixth_pinned_chat_is_409_and_nothing_changes():
    alice, bob = make_user(), make_user()
    cids = [group_chat(alice, bob, name=f"c{i}") for i in range(6)]
    for cid in cids[:5]:
        assert own(alice, cid, pinned=True).status_code == 200
    OutboxEvent.objects.all().delete()

    response = own(alice, cids[5], pinned=True)

    assert (response.status_code, response.json()["error"]["code"]) == (409, "too_many_pinned_chats")
    assert Membership.objects.filter(user_id=alice.id, pinned_at__isnull=False).count() == 5
    assert not OutboxEvent.objects.exists()
    # unpinning one makes room
    assert own(alice, cids[0], pinned=False).json()["pinned"] is False
    assert own(alice, cids[5], pinned=True).status_code == 200
    assert [c for c, pinned, _ in chat_list(alice) if pinned] == [cids[5], cids[4], cids[3], cids[2], cids[1]]


@pytest.mark.django_db
def test_an_archived_chat_leaves_the_list_until_a_message_unless_muted():
    # given
    alice, bob = make_user(), make_user()
    cid, other = group_chat(alice, bob, name="a"), group_chat(alice, bob, name="b")

    # when
    response = own(alice, cid, archived=True)

    # then
    assert response.json()["archived"] is True
    assert chat_list(alice) == [(other, False, False)]
    assert chat_list(alice, archived="true") == [(cid, False, True)]
    assert len(chat_list(bob)) == 2
    # a new message brings it back
    send_message(bob, cid, "news")
    assert chat_list(alice) == [(cid, False, False), (other, False, False)]
    assert chat_list(alice, archived="true") == []
    # muted and archived: it stays archived when a message arrives
    own(alice, cid, archived=True)
    own(alice, cid, muted_until="forever")
    send_message(bob, cid, "more news")
    assert chat_list(alice) == [(other, False, False)]
    assert chat_list(alice, archived="true") == [(cid, False, True)]


@pytest.mark.django_db
def test_nobody_pins_or_archives_for_somebody_else_and_outsiders_get_404():
    alice, bob, outsider = make_user(), make_user(), make_user()
    cid = group_chat(alice, bob)
    OutboxEvent.objects.all().delete()

    for body in ({"pinned": True}, {"archived": True}):
        refused = alice.client.patch(f"/chats/{cid}/users/{bob.id}/", body, format="json")
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "not_yours")
        assert own(outsider, cid, **body).json()["error"]["code"] == "chat_not_found"
        bad = own(alice, cid, **{next(iter(body)): "yes"})
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "validation_error")
    bad_query = alice.client.get(f"/accounts/{alice.id}/chats/", {"archived": "nope"})
    assert (bad_query.status_code, bad_query.json()["error"]["code"]) == (400, "validation_error")
    assert not Membership.objects.filter(pinned_at__isnull=False).exists()
    assert not Membership.objects.filter(archived_at_seq__isnull=False).exists()
    assert not OutboxEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_one_s_other_phone_gets_chat_list_updated_and_the_other_member_nothing(relay, broker):
    # given: alice's second phone, and bob's
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    wait_until(lambda: not OutboxEvent.objects.exists(), 20, "the relay to drain the outbox")
    other_phone, bob_phone = login(alice), MqttProbe(broker.host, broker.port)
    alice_phone = MqttProbe(broker.host, broker.port)
    assert alice_phone.connect(**other_phone.mqtt) == 0 and bob_phone.connect(**bob.mqtt) == 0
    assert alice_phone.subscribe(f"chat/users/{alice.id}") == 1
    assert bob_phone.subscribe(f"chat/users/{bob.id}") == 1 and bob_phone.subscribe(f"chat/chats/{cid}") == 1
    try:
        # when
        assert own(alice, cid, pinned=True).status_code == 200
        assert own(alice, cid, archived=True).status_code == 200

        # then
        alice_phone.wait_for(2)
        assert [json.loads(p)["data"] for p in alice_phone.messages_on(f"chat/users/{alice.id}")] == [
            {"chat": cid, "pinned": True, "archived": False},
            {"chat": cid, "pinned": False, "archived": True},
        ]
        bob_phone.expect_nothing(0.5)
    finally:
        alice_phone.close()
        bob_phone.close()


# --- pinned messages ----------------------------------------------------------------------


def pin(user, cid, mid, method="put"):
    return getattr(user.client, method)(f"/chats/{cid}/messages/{mid}/pin/")


@pytest.fixture
def chat(db):
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = group_chat(alice, bob, carol)
    first, second = send_message(bob, cid, "rules"), send_message(carol, cid, "dates")
    OutboxEvent.objects.all().delete()
    return alice, bob, carol, cid, first, second


def test_admins_and_the_owner_pin_and_members_see_it(chat):
    # given
    alice, bob, carol, cid, first, second = chat
    assert alice.client.patch(f"/chats/{cid}/users/{bob.id}/", {"role": "admin"}, format="json").status_code == 200
    OutboxEvent.objects.all().delete()

    # when
    pinned = pin(alice, cid, first["id"])
    pin(bob, cid, second["id"])

    # then
    body = pinned.json()
    assert pinned.status_code == 200
    # the chat's next version after the role change
    assert (body["pinned_by"], body["pinned_at"] is not None, body["version"]) == (alice.id, True, second["version"] + 2)
    listing = carol.client.get(f"/chats/{cid}/pins/")
    assert listing.status_code == 200
    assert [(m["id"], m["pinned_by"]) for m in listing.json()] == [(second["id"], bob.id), (first["id"], alice.id)]
    [(row, event), _] = queued_events()
    assert (event["type"], event["version"], event["data"]) == ("message.updated", body["version"], body)
    assert sorted(row.user_ids) == sorted([alice.id, bob.id, carol.id]) and row.chat_id == cid
    # history shows it too
    [listed] = [m for m in carol.client.get(f"/chats/{cid}/messages/").json()["results"] if m["id"] == first["id"]]
    assert (listed["pinned_at"], listed["pinned_by"]) == (body["pinned_at"], alice.id)


def test_members_cannot_pin_in_a_group_and_outsiders_get_404(chat):
    alice, bob, carol, cid, first, _ = chat
    outsider = make_user()
    OutboxEvent.objects.all().delete()

    refused = pin(bob, cid, first["id"])

    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "not_allowed")
    assert pin(outsider, cid, first["id"]).json()["error"]["code"] == "chat_not_found"
    assert pin(alice, cid, 10**9).json()["error"]["code"] == "message_not_found"
    assert alice.client.get(f"/chats/{cid}/pins/").json() == []
    assert outsider.client.get(f"/chats/{cid}/pins/").json()["error"]["code"] == "chat_not_found"
    assert not Message.objects.filter(pinned_at__isnull=False).exists() and not OutboxEvent.objects.exists()


@pytest.mark.django_db
def test_either_member_of_a_direct_chat_pins():
    alice, bob = make_user(), make_user()
    cid = alice.client.post("/chats/", {"members": [bob.id]}, format="json").json()["id"]
    message = send_message(alice, cid)

    assert pin(bob, cid, message["id"]).json()["pinned_by"] == bob.id


def test_unpinning_and_deleting_unpin_and_deleted_messages_take_no_pin(chat):
    alice, bob, _, cid, first, second = chat
    pin(alice, cid, first["id"])
    pin(alice, cid, second["id"])
    OutboxEvent.objects.all().delete()

    assert pin(alice, cid, first["id"], "delete").status_code == 204
    deleted = bob.client.patch(f"/chats/{cid}/messages/{first['id']}/", {"deleted": True}, format="json").json()
    deleted_pinned = alice.client.patch(f"/chats/{cid}/messages/{second['id']}/", {"deleted": True}, format="json")

    assert (deleted["pinned_at"], deleted["pinned_by"]) == (None, None)
    assert (deleted_pinned.json()["pinned_at"], deleted_pinned.json()["pinned_by"]) == (None, None)
    assert alice.client.get(f"/chats/{cid}/pins/").json() == []
    refused = pin(alice, cid, first["id"])
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "message_deleted")
    # unpinning what is not pinned: 204, nothing told
    before = OutboxEvent.objects.count()
    assert pin(alice, cid, first["id"], "delete").status_code == 204
    assert OutboxEvent.objects.count() == before


def test_past_the_cap_pinning_is_409(chat, monkeypatch):
    alice, _, _, cid, first, second = chat
    monkeypatch.setattr(pins, "PINS_MAX", 1)
    pin(alice, cid, first["id"])
    OutboxEvent.objects.all().delete()

    refused = pin(alice, cid, second["id"])

    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "too_many_pins")
    assert Message.objects.get(id=second["id"]).pinned_at is None and not OutboxEvent.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_member_s_phone_gets_the_pinned_message(relay, broker):
    alice, bob = make_user(), make_user()
    cid = group_chat(alice, bob)
    message = send_message(bob, cid)
    wait_until(lambda: not OutboxEvent.objects.exists(), 20, "the relay to drain the outbox")
    phone = MqttProbe(broker.host, broker.port)
    assert phone.connect(**bob.mqtt) == 0 and phone.subscribe(f"chat/chats/{cid}") == 1
    try:
        body = pin(alice, cid, message["id"]).json()

        [received] = phone.wait_for(1)
        event = json.loads(received.payload)
        assert (event["type"], event["version"], event["data"]) == ("message.updated", body["version"], body)
        assert body["pinned_by"] == alice.id
    finally:
        phone.close()
