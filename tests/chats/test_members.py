"""Group administration: the role matrix (README), tried from the side that must be refused."""

import json

import pytest

from chats.models import Chat, Membership
from chatserver.models import OutboxEvent
from tests.support.factories import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def team():
    """A group with one user of each role, plus an outsider."""
    owner, admin, member, restricted, outsider = (make_user() for _ in range(5))
    cid = owner.client.post(
        "/chats/", {"members": [admin.id, member.id, restricted.id], "name": "team"}, format="json"
    ).json()["id"]
    Membership.objects.filter(chat_id=cid, user_id=admin.id).update(role="admin")
    Membership.objects.filter(chat_id=cid, user_id=restricted.id).update(role="restricted")
    OutboxEvent.objects.all().delete()
    return {"cid": cid, "owner": owner, "admin": admin, "member": member,
            "restricted": restricted, "outsider": outsider}


def roles(cid):
    return dict(Membership.objects.filter(chat_id=cid).values_list("user_id", "role"))


def event_types():
    return [json.loads(e.payload)["type"] for e in OutboxEvent.objects.order_by("id") if e.payload]


def test_restricted_members_read_but_cannot_post(team):
    cid, restricted = team["cid"], team["restricted"]

    post = restricted.client.post(f"/chats/{cid}/messages/", {"content": "hi"}, format="json")
    read = restricted.client.get(f"/chats/{cid}/messages/")

    assert post.status_code == 403
    assert post.json()["error"]["code"] == "cannot_post"
    assert read.status_code == 200
    assert Chat.objects.get(id=cid).last_seq == 0
    assert OutboxEvent.objects.count() == 0


@pytest.mark.parametrize("actor", ["member", "restricted"])
def test_only_admins_and_owner_add_members(team, actor):
    cid, newcomer = team["cid"], make_user()
    OutboxEvent.objects.all().delete()
    before = roles(cid)

    response = team[actor].client.post(f"/chats/{cid}/users/{newcomer.id}/")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_allowed"
    assert roles(cid) == before
    assert OutboxEvent.objects.count() == 0


def test_admin_adds_a_member_whose_pointer_starts_at_the_newest_message(team):
    cid, newcomer = team["cid"], make_user()
    team["owner"].client.post(f"/chats/{cid}/messages/", {"content": "before"}, format="json")
    OutboxEvent.objects.all().delete()

    response = team["admin"].client.post(f"/chats/{cid}/users/{newcomer.id}/")
    again = team["admin"].client.post(f"/chats/{cid}/users/{newcomer.id}/")

    assert response.status_code == 201
    assert response.json()["role"] == "member"
    assert again.status_code == 200
    membership = Membership.objects.get(chat_id=cid, user_id=newcomer.id)
    assert (membership.joined_seq, membership.last_read_seq) == (1, 1)
    [event] = OutboxEvent.objects.all()
    assert event.access == [{"op": "member_grant", "chat": cid, "user": newcomer.id}]
    assert json.loads(event.payload)["type"] == "member.added"
    assert newcomer.id in event.user_ids
    # nothing older is unread for the newcomer
    history = newcomer.client.get(f"/chats/{cid}/messages/").json()["results"]
    assert [m["content"] for m in history] == ["before"]


@pytest.mark.parametrize(
    "actor, target",
    [
        ("member", "restricted"),
        ("member", "admin"),
        ("restricted", "member"),
        ("admin", "admin"),
        ("admin", "owner"),
    ],
)
def test_kicks_refused_to_those_who_do_not_outrank_the_target(team, actor, target):
    cid = team["cid"]
    if actor == target:
        other_admin = make_user()
        team["owner"].client.post(f"/chats/{cid}/users/{other_admin.id}/")
        Membership.objects.filter(chat_id=cid, user_id=other_admin.id).update(role="admin")
        target_id = other_admin.id
    else:
        target_id = team[target].id
    OutboxEvent.objects.all().delete()
    before = roles(cid)

    response = team[actor].client.delete(f"/chats/{cid}/users/{target_id}/")

    assert response.status_code == 403
    assert roles(cid) == before
    assert OutboxEvent.objects.count() == 0


@pytest.mark.parametrize("actor, target", [("admin", "member"), ("admin", "restricted"), ("owner", "admin")])
def test_kick_removes_and_revokes_before_telling(team, actor, target):
    cid, target_id = team["cid"], team[target].id

    response = team[actor].client.delete(f"/chats/{cid}/users/{target_id}/")

    assert response.status_code == 204
    assert target_id not in roles(cid)
    [event] = OutboxEvent.objects.all()
    assert event.access == [{"op": "member_revoke", "chat": cid, "user": target_id}]
    payload = json.loads(event.payload)
    assert payload["type"] == "member.removed"
    assert payload["data"]["member"]["id"] == target_id
    assert target_id in event.user_ids  # the kicked user learns it on its own topic
    assert team[target].client.get(f"/chats/{cid}/messages/").status_code == 404


def test_owner_leaving_passes_ownership_to_the_longest_standing_admin(team):
    cid = team["cid"]
    later_admin = make_user()
    team["owner"].client.post(f"/chats/{cid}/users/{later_admin.id}/")
    Membership.objects.filter(chat_id=cid, user_id=later_admin.id).update(role="admin")
    OutboxEvent.objects.all().delete()

    response = team["owner"].client.delete(f"/chats/{cid}/users/{team['owner'].id}/")

    assert response.status_code == 204
    after = roles(cid)
    assert team["owner"].id not in after
    assert after[team["admin"].id] == "owner"
    assert after[later_admin.id] == "admin"
    assert event_types() == ["member.removed", "member.updated"]


def test_owner_leaving_without_admins_passes_to_the_longest_standing_member():
    owner, first, second = make_user(), make_user(), make_user()
    cid = owner.client.post("/chats/", {"members": [first.id], "name": "t"}, format="json").json()["id"]
    owner.client.post(f"/chats/{cid}/users/{second.id}/")

    owner.client.delete(f"/chats/{cid}/users/{owner.id}/")

    assert roles(cid) == {first.id: "owner", second.id: "member"}


def test_last_member_leaving_deletes_the_group():
    owner, other = make_user(), make_user()
    cid = owner.client.post("/chats/", {"members": [other.id], "name": "t"}, format="json").json()["id"]

    assert other.client.delete(f"/chats/{cid}/users/{other.id}/").status_code == 204
    assert owner.client.delete(f"/chats/{cid}/users/{owner.id}/").status_code == 204

    assert not Chat.objects.filter(id=cid).exists()


@pytest.mark.parametrize(
    "actor, target, role",
    [
        ("admin", "member", "admin"),
        ("admin", "restricted", "admin"),
        ("admin", "member", "owner"),
        ("admin", "owner", "member"),
        ("member", "restricted", "member"),
        ("restricted", "member", "restricted"),
    ],
)
def test_role_changes_refused(team, actor, target, role):
    cid = team["cid"]
    before = roles(cid)

    response = team[actor].client.patch(f"/chats/{cid}/users/{team[target].id}/", {"role": role}, format="json")

    assert response.status_code == 403
    assert roles(cid) == before
    assert OutboxEvent.objects.count() == 0


def test_admin_switches_member_and_restricted_and_owner_hands_over(team):
    cid = team["cid"]

    demoted = team["admin"].client.patch(f"/chats/{cid}/users/{team['member'].id}/", {"role": "restricted"}, format="json")
    handed = team["owner"].client.patch(f"/chats/{cid}/users/{team['admin'].id}/", {"role": "owner"}, format="json")

    assert demoted.status_code == 200
    assert handed.status_code == 200
    after = roles(cid)
    assert after[team["member"].id] == "restricted"
    assert after[team["admin"].id] == "owner"
    assert after[team["owner"].id] == "admin"
    assert event_types() == ["member.updated", "member.updated", "member.updated"]


def test_bad_role_is_400(team):
    response = team["owner"].client.patch(
        f"/chats/{team['cid']}/users/{team['member'].id}/", {"role": "god"}, format="json"
    )
    assert response.status_code == 400
    assert "role" in response.json()["error"]["fields"]


@pytest.mark.parametrize("actor", ["member", "restricted"])
def test_rename_needs_admin(team, actor):
    response = team[actor].client.patch(f"/chats/{team['cid']}/", {"name": "mine"}, format="json")
    assert response.status_code == 403
    assert Chat.objects.get(id=team["cid"]).name == "team"


@pytest.mark.parametrize("actor", ["admin", "member", "restricted"])
def test_only_the_owner_deletes_the_group(team, actor):
    response = team[actor].client.delete(f"/chats/{team['cid']}/")

    assert response.status_code == 403
    assert Chat.objects.filter(id=team["cid"]).exists()
    assert OutboxEvent.objects.count() == 0


def test_admin_renames_and_only_owner_deletes(team):
    cid = team["cid"]

    renamed = team["admin"].client.patch(f"/chats/{cid}/", {"name": "new"}, format="json")
    refused = team["admin"].client.delete(f"/chats/{cid}/")
    deleted = team["owner"].client.delete(f"/chats/{cid}/")

    assert renamed.status_code == 200 and renamed.json()["name"] == "new"
    assert refused.status_code == 403
    assert deleted.status_code == 204
    assert not Chat.objects.filter(id=cid).exists()
    last = OutboxEvent.objects.order_by("id").last()
    assert last.access == [{"op": "chat_remove", "chat": cid}]
    assert json.loads(last.payload)["type"] == "chat.deleted"


def test_direct_chats_have_no_membership_changes():
    alice, bob, carol = make_user(), make_user(), make_user()
    cid = alice.client.post("/chats/", {"members": [bob.id]}, format="json").json()["id"]

    assert alice.client.post(f"/chats/{cid}/users/{carol.id}/").status_code == 400
    assert alice.client.delete(f"/chats/{cid}/users/{bob.id}/").status_code == 400
    assert alice.client.delete(f"/chats/{cid}/users/{alice.id}/").status_code == 400
    assert alice.client.patch(f"/chats/{cid}/", {"name": "x"}, format="json").status_code == 400
    assert roles(cid) == {alice.id: "member", bob.id: "member"}
