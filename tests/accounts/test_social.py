"""People, friends, blocks and the chat list (issue: social graph), in-process HTTP."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import Block, FriendRequest, Friendship
from chats.models import Chat, Message
from chatserver.models import OutboxEvent
from tests.support.factories import make_user

pytestmark = pytest.mark.django_db


def post(client, path, body=None):
    return client.post(path, body, format="json")


def published():
    return [(e.user_ids, json.loads(e.payload)) for e in OutboxEvent.objects.order_by("id") if e.payload]


def friends_of(user):
    return {u["id"] for u in user.client.get(f"/accounts/{user.id}/friends/").json()["results"]}


# --- friends ----------------------------------------------------------------------------


def test_request_then_accept_makes_friends_and_tells_both():
    alice, bob = make_user(), make_user()
    OutboxEvent.objects.all().delete()

    asked = post(alice.client, f"/accounts/{alice.id}/friends/{bob.id}/")
    again = post(alice.client, f"/accounts/{alice.id}/friends/{bob.id}/")
    pending = bob.client.get(f"/accounts/{bob.id}/friends/requests/").json()
    accepted = post(bob.client, f"/accounts/{bob.id}/friends/{alice.id}/")

    assert (asked.status_code, asked.json()) == (201, {"status": "requested"})
    assert (again.status_code, again.json()) == (200, {"status": "requested"})
    assert [u["id"] for u in pending["incoming"]] == [alice.id]
    assert pending["outgoing"] == []
    assert (accepted.status_code, accepted.json()) == (200, {"status": "friends"})
    assert friends_of(alice) == {bob.id}
    assert friends_of(bob) == {alice.id}
    assert FriendRequest.objects.count() == 0
    events = published()
    assert [(ids, p["type"]) for ids, p in events] == [
        ([bob.id], "friend.requested"),
        ([alice.id], "friend.requested"),
        ([alice.id], "friend.accepted"),
        ([bob.id], "friend.accepted"),
    ]


def test_requests_in_both_directions_become_a_friendship():
    alice, bob = make_user(), make_user()

    post(alice.client, f"/accounts/{alice.id}/friends/{bob.id}/")
    crossing = post(bob.client, f"/accounts/{bob.id}/friends/{alice.id}/")

    assert crossing.json() == {"status": "friends"}
    assert Friendship.objects.count() == 2


@pytest.mark.parametrize("who", ["unfriend", "cancel", "decline"])
def test_delete_unfriends_cancels_or_declines(who):
    alice, bob = make_user(), make_user()
    post(alice.client, f"/accounts/{alice.id}/friends/{bob.id}/")
    if who == "unfriend":
        post(bob.client, f"/accounts/{bob.id}/friends/{alice.id}/")
    actor, other = (bob, alice) if who == "decline" else (alice, bob)
    OutboxEvent.objects.all().delete()

    response = actor.client.delete(f"/accounts/{actor.id}/friends/{other.id}/")

    assert response.status_code == 204
    assert Friendship.objects.count() == 0
    assert FriendRequest.objects.count() == 0
    assert sorted(p["type"] for _, p in published()) == ["friend.removed", "friend.removed"]
    assert actor.client.delete(f"/accounts/{actor.id}/friends/{other.id}/").status_code == 404


def test_friend_lists_are_only_one_s_own():
    alice, bob = make_user(), make_user()

    for path in ["friends/", "friends/requests/", "blocks/", "chats/"]:
        response = bob.client.get(f"/accounts/{alice.id}/{path}")
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "not_yours"
    assert post(bob.client, f"/accounts/{alice.id}/friends/{bob.id}/").status_code == 403
    assert post(bob.client, f"/accounts/{alice.id}/blocks/{bob.id}/").status_code == 403
    assert FriendRequest.objects.count() == 0
    assert Block.objects.count() == 0


def test_friend_requests_to_oneself_or_nobody_are_refused():
    alice = make_user()

    assert post(alice.client, f"/accounts/{alice.id}/friends/{alice.id}/").status_code == 400
    assert post(alice.client, f"/accounts/{alice.id}/friends/999999/").status_code == 404
    assert post(alice.client, f"/accounts/{alice.id}/friends/99999999999999999999/").status_code == 404


# --- blocks -----------------------------------------------------------------------------


@pytest.fixture
def blocked_pair():
    """carol blocked mallory (after they were friends and had a direct chat)."""
    carol, mallory = make_user(), make_user()
    post(mallory.client, f"/accounts/{mallory.id}/friends/{carol.id}/")
    post(carol.client, f"/accounts/{carol.id}/friends/{mallory.id}/")
    cid = post(mallory.client, "/chats/", {"members": [carol.id]}).json()["id"]
    response = post(carol.client, f"/accounts/{carol.id}/blocks/{mallory.id}/")
    assert response.status_code == 201
    return carol, mallory, cid


def test_blocking_ends_the_friendship_and_is_listed(blocked_pair):
    carol, mallory, _ = blocked_pair

    assert Friendship.objects.count() == 0
    assert [u["id"] for u in carol.client.get(f"/accounts/{carol.id}/blocks/").json()["results"]] == [mallory.id]
    assert post(carol.client, f"/accounts/{carol.id}/blocks/{mallory.id}/").status_code == 200


def test_a_blocked_user_cannot_befriend_message_or_add_the_blocker(blocked_pair):
    carol, mallory, direct = blocked_pair
    group = post(mallory.client, "/chats/", {"members": [make_user().id], "name": "g"}).json()["id"]
    OutboxEvent.objects.all().delete()
    messages_before = Message.objects.count()

    befriend = post(mallory.client, f"/accounts/{mallory.id}/friends/{carol.id}/")
    message = post(mallory.client, f"/chats/{direct}/messages/", {"content": "hey"})
    new_direct = post(mallory.client, "/chats/", {"members": [carol.id]})
    new_group = post(mallory.client, "/chats/", {"members": [carol.id, make_user().id], "name": "x"})
    OutboxEvent.objects.all().delete()
    add = post(mallory.client, f"/chats/{group}/users/{carol.id}/")

    for response in (befriend, message, new_direct, new_group, add):
        assert response.status_code == 403, response.content
        assert response.json()["error"]["code"] == "blocked"
    assert Message.objects.count() == messages_before
    assert FriendRequest.objects.count() == 0
    assert OutboxEvent.objects.count() == 0
    # the blocker cannot message either while the block stands
    assert post(carol.client, f"/chats/{direct}/messages/", {"content": "hi"}).status_code == 403


def test_blocked_users_do_not_find_or_see_the_blocker(blocked_pair):
    carol, mallory, _ = blocked_pair

    found = mallory.client.get("/accounts/", {"search": carol.username[:3]}).json()["results"]
    profile = mallory.client.get(f"/accounts/{carol.id}/")

    assert carol.id not in [u["id"] for u in found]
    assert profile.status_code == 404


def test_unblock_lets_them_talk_again(blocked_pair):
    carol, mallory, direct = blocked_pair

    assert carol.client.delete(f"/accounts/{carol.id}/blocks/{mallory.id}/").status_code == 204
    assert carol.client.delete(f"/accounts/{carol.id}/blocks/{mallory.id}/").status_code == 404
    assert post(mallory.client, f"/chats/{direct}/messages/", {"content": "sorry"}).status_code == 201


# --- people search ----------------------------------------------------------------------


def test_search_is_a_case_insensitive_prefix_match_paginated():
    me = make_user("searcher")
    for name in ["Anna", "annabel", "anne", "bob"]:
        make_user(name)

    page = me.client.get("/accounts/", {"search": "ANN", "limit": 2}).json()
    rest = me.client.get("/accounts/", {"search": "ann", "limit": 2, "offset": 2}).json()

    assert page["count"] == 3
    assert [u["username"] for u in page["results"] + rest["results"]] == ["Anna", "annabel", "anne"]
    assert set(page["results"][0]) == {"id", "username", "display_name", "avatar", "presence", "last_seen", "deleted"}


# --- chat list --------------------------------------------------------------------------


def send(user, cid, content="hi"):
    response = post(user.client, f"/chats/{cid}/messages/", {"content": content})
    assert response.status_code == 201
    return response.json()


def test_chat_list_is_most_recent_first_with_last_message_and_unread_count():
    alice, bob, carol = make_user(), make_user(), make_user()
    old = post(alice.client, "/chats/", {"members": [bob.id]}).json()["id"]
    new = post(alice.client, "/chats/", {"members": [bob.id, carol.id], "name": "g"}).json()["id"]
    send(bob, old, "first")
    send(bob, new, "one")
    last = send(carol, new, "two")
    deleted = send(bob, old, "oops")
    Message.objects.filter(id=deleted["id"]).update(deleted=True)
    newest = send(bob, old, "latest")

    body = alice.client.get(f"/accounts/{alice.id}/chats/").json()

    assert [c["id"] for c in body["results"]] == [old, new]
    first, second = body["results"]
    assert first["last_message"]["id"] == newest["id"]
    assert first["unread_count"] == 2  # "first" and "latest"; the deleted one does not count
    assert second["last_message"]["content"] == last["content"]
    assert second["unread_count"] == 2
    assert second["last_message"]["unread_count"] == 2  # alice, and bob (who read up to his own "one")
    assert {m["id"] for m in second["members"]} == {alice.id, bob.id, carol.id}


def test_chat_list_costs_a_fixed_number_of_queries():
    alice = make_user()
    others = [make_user() for _ in range(12)]

    def count_queries():
        with CaptureQueriesContext(connection) as queries:
            assert alice.client.get(f"/accounts/{alice.id}/chats/").status_code == 200
        return len(queries)

    for other in others[:3]:
        cid = post(alice.client, "/chats/", {"members": [other.id]}).json()["id"]
        send(other, cid)
    few = count_queries()
    for other in others[3:]:
        cid = post(alice.client, "/chats/", {"members": [other.id, others[0].id], "name": "g"}).json()["id"]
        for _ in range(3):
            send(other, cid)
    many = count_queries()

    assert few == many
    assert many <= 6  # token, count, page, members, last messages, deleted counts


def test_hiding_a_direct_chat_hides_it_until_the_next_message():
    alice, bob = make_user(), make_user()
    cid = post(alice.client, "/chats/", {"members": [bob.id]}).json()["id"]
    send(bob, cid, "hello")

    assert alice.client.delete(f"/chats/{cid}/").status_code == 204
    hidden = alice.client.get(f"/accounts/{alice.id}/chats/").json()["results"]
    still = bob.client.get(f"/accounts/{bob.id}/chats/").json()["results"]
    send(bob, cid, "are you there?")
    back = alice.client.get(f"/accounts/{alice.id}/chats/").json()["results"]

    assert hidden == []
    assert [c["id"] for c in still] == [cid]
    assert [c["id"] for c in back] == [cid]
    assert Chat.objects.count() == 1
    # asking for the pair's chat again also brings it back, the same one
    alice.client.delete(f"/chats/{cid}/")
    again = post(alice.client, "/chats/", {"members": [bob.id]})
    assert again.status_code == 200 and again.json()["id"] == cid
    assert [c["id"] for c in alice.client.get(f"/accounts/{alice.id}/chats/").json()["results"]] == [cid]


def test_search_refuses_a_nul_character_naming_the_parameter():
    me = make_user("searcher")

    response = me.client.get("/accounts/", {"search": "ann\x00"})

    assert response.status_code == 400
    assert response.json() == {
        "error": {"code": "validation_error", "message": "Invalid input.",
                  "fields": {"search": ["Null characters are not allowed."]}}
    }
