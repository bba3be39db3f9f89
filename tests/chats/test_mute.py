"""Mute: per member, until a time or for good; seen by the member only."""

import json

import pytest

from chats.models import MUTED_FOREVER, Membership
from chatserver.models import OutboxEvent
from tests.support.factories import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def pair():
    alice, bob = make_user(), make_user()
    cid = alice.client.post("/chats/", {"members": [bob.id], "name": "g"}, format="json").json()["id"]
    return alice, bob, cid


def mute(user, cid, until, who=None):
    return user.client.patch(f"/chats/{cid}/users/{who or user.id}/", {"muted_until": until}, format="json")


def test_a_member_mutes_until_a_time_and_sees_it_in_its_lists_only(pair):
    # given
    alice, bob, cid = pair
    OutboxEvent.objects.all().delete()

    # when
    response = mute(alice, cid, "2999-01-02T03:04:05Z")

    # then
    assert response.status_code == 200
    assert (response.json()["muted_until"], response.json()["muted"]) == ("2999-01-02T03:04:05Z", True)
    [chat] = alice.client.get(f"/accounts/{alice.id}/chats/").json()["results"]
    assert (chat["muted_until"], chat["muted"]) == ("2999-01-02T03:04:05Z", True)
    members = {m["id"]: m for m in alice.client.get(f"/chats/{cid}/users/").json()}
    assert members[alice.id]["muted"] is True
    assert "muted_until" not in members[bob.id]
    # bob sees neither alice's mute nor a mute of his own
    bob_members = {m["id"]: m for m in bob.client.get(f"/chats/{cid}/users/").json()}
    assert "muted_until" not in bob_members[alice.id]
    assert bob.client.get(f"/accounts/{bob.id}/chats/").json()["results"][0]["muted"] is False
    # nobody else is told; alice's own devices are (her tablet shows the chat muted too)
    [row] = OutboxEvent.objects.all()
    assert row.user_ids == [alice.id] and row.chat_id is None
    assert json.loads(row.payload)["type"] == "mute.updated"
    assert json.loads(row.payload)["data"] == {"chat": cid, "muted_until": "2999-01-02T03:04:05Z", "muted": True}


def test_muting_again_the_same_way_tells_nobody(pair):
    alice, _, cid = pair
    mute(alice, cid, "forever")
    OutboxEvent.objects.all().delete()

    assert mute(alice, cid, "forever").status_code == 200

    assert OutboxEvent.objects.count() == 0


def test_forever_and_unmute(pair):
    alice, _, cid = pair

    forever = mute(alice, cid, "forever")
    assert forever.status_code == 200
    assert Membership.objects.get(chat_id=cid, user_id=alice.id).muted_until == MUTED_FOREVER

    unmuted = mute(alice, cid, None)
    assert (unmuted.json()["muted_until"], unmuted.json()["muted"]) == (None, False)


def test_a_past_time_is_not_muted(pair):
    alice, _, cid = pair

    response = mute(alice, cid, "2001-01-01T00:00:00Z")

    assert response.json()["muted"] is False


def test_nobody_mutes_for_somebody_else(pair):
    alice, bob, cid = pair

    response = mute(alice, cid, "forever", who=bob.id)

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_yours"
    assert Membership.objects.get(chat_id=cid, user_id=bob.id).muted_until is None


def test_outsiders_get_404(pair):
    _, _, cid = pair
    mallory = make_user()

    assert mute(mallory, cid, "forever").status_code == 404
    assert mute(mallory, cid, "forever", who=make_user().id).status_code == 404


@pytest.mark.parametrize("body", [
    {"muted_until": "soon"}, {"muted_until": 5}, {"muted_until": "forever", "role": "member"}, {},
])
def test_bad_bodies_are_400(pair, body):
    alice, _, cid = pair

    response = alice.client.patch(f"/chats/{cid}/users/{alice.id}/", body, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert Membership.objects.get(chat_id=cid, user_id=alice.id).muted_until is None
