"""Managing one's account over HTTP (in-process): settings and profile, password, devices,
avatar, deletion; with what each queued. The broker's side, with the real relay and
Mosquitto, is at the end."""

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from accounts.models import Block, Device, FriendRequest, Friendship, User
from chats.models import Chat, Membership, Message
from chatserver.broker_access import DeviceRemove
from chatserver.events import EventType
from tests.support.factories import PASSWORD, TestUser, authed_client, login, make_user
from tests.support.mqtt import MqttProbe
from tests.support.stack import wait_until

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "another horse battery staple"


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = str(tmp_path / "media")
    return tmp_path / "media"


def png(width=64, height=48, **info) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 60)).save(out, format="PNG", **info)
    return out.getvalue()


def upload(name: str, data: bytes, content_type="image/png") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type=content_type)


def removed(device) -> DeviceRemove:
    return DeviceRemove(user=device.user_id, username=device.mqtt_username, client_id=device.mqtt_client_id)


def friends(a: TestUser, b: TestUser) -> None:
    assert a.client.post(f"/accounts/{a.id}/friends/{b.id}/").status_code == 201
    assert b.client.post(f"/accounts/{b.id}/friends/{a.id}/").status_code == 200


def direct(a: TestUser, b: TestUser) -> int:
    return a.client.post("/chats/", {"members": [b.id]}, format="json").json()["id"]


def group(owner: TestUser, *others: TestUser, name="g") -> int:
    return owner.client.post("/chats/", {"members": [o.id for o in others], "name": name}, format="json").json()["id"]


# --- PATCH /accounts/me/ ------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field, message",
    [
        ({"password": NEW_PASSWORD}, "password", "This field cannot be changed here."),
        ({"username": "mallory"}, "username", "This field cannot be changed here."),
        ({"read_receipt": False}, "read_receipt", "Unknown field."),
        ({"push_previews": True, "theme": "dark"}, "theme", "Unknown field."),
    ],
)
def test_patch_me_refuses_unknown_and_read_only_fields_and_changes_nothing(outbox, body, field, message):
    # given
    alice = make_user("alice")
    outbox.clear()

    # when
    response = alice.client.patch("/accounts/me/", body, format="json")

    # then
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {field: [message]}
    user = User.objects.get(id=alice.id)
    assert (user.username, user.check_password(PASSWORD), user.push_previews) == ("alice", True, True)
    assert outbox.rows == []


def test_every_writable_setting_is_shown_back_by_me():
    # given
    alice = make_user("alice")

    # when
    patched = alice.client.patch(
        "/accounts/me/", {"read_receipts": False, "push_previews": False, "display_name": "Alice L."}, format="json"
    )

    # then
    assert patched.status_code == 200
    me = alice.client.get("/accounts/me/").json()
    assert me["settings"] == {"read_receipts": False, "push_previews": False}
    assert me["display_name"] == "Alice L."
    assert me["avatar"] is None
    assert patched.json() == me


def test_a_display_name_is_told_to_friends_and_chat_partners_only(outbox):
    # given: bob a friend, carol in a group with alice, dave in a direct chat, erin nobody
    alice, bob, carol, dave, erin = (make_user(n) for n in ("alice", "bob", "carol", "dave", "erin"))
    friends(alice, bob)
    group(carol, alice)
    direct(dave, alice)
    outbox.clear()

    # when
    response = alice.client.patch("/accounts/me/", {"display_name": "  Alice  "}, format="json")

    # then
    assert response.status_code == 200
    (row,) = outbox.rows
    assert row.type == EventType.USER_UPDATED
    assert row.user_ids == sorted([alice.id, bob.id, carol.id, dave.id])
    assert row.data["display_name"] == "Alice"
    assert bob.client.get(f"/accounts/{alice.id}/").json()["display_name"] == "Alice"
    assert erin.id not in row.user_ids


@pytest.mark.parametrize("name", ["x" * 65, "a\u0000b", "a\u202eb", 42])
def test_a_bad_display_name_is_a_400(outbox, name):
    alice = make_user()
    outbox.clear()

    response = alice.client.patch("/accounts/me/", {"display_name": name}, format="json")

    assert response.status_code == 400
    assert "display_name" in response.json()["error"]["fields"]
    assert User.objects.get(id=alice.id).display_name == ""
    assert outbox.rows == []


def test_the_same_display_name_again_queues_nothing(outbox):
    alice = make_user()
    alice.client.patch("/accounts/me/", {"display_name": "A"}, format="json")
    outbox.clear()

    assert alice.client.patch("/accounts/me/", {"display_name": "A"}, format="json").status_code == 200

    assert outbox.rows == []


# --- password -----------------------------------------------------------------------------


def test_a_password_change_signs_the_other_devices_out_and_keeps_this_one(outbox):
    # given: alice on a phone and a tablet, with a push token on the tablet
    alice = make_user("alice")
    tablet = login(alice)
    assert tablet.client.put("/accounts/me/push/", {"token": "fcm-tablet"}, format="json").status_code == 200
    outbox.clear()

    # when
    response = alice.client.post(
        "/accounts/me/password/", {"current_password": PASSWORD, "new_password": NEW_PASSWORD}, format="json"
    )

    # then
    assert response.status_code == 200
    assert response.json()["id"] == alice.id
    assert alice.client.get("/accounts/me/").status_code == 200
    assert tablet.client.get("/accounts/me/").status_code == 401
    assert list(Device.objects.filter(user_id=alice.id).values_list("id", flat=True)) == [alice.device.id]
    assert not Device.objects.filter(push_token="fcm-tablet").exists()
    (row,) = outbox.rows
    assert (row.type, row.access) == (None, [removed(tablet.device)])
    login_new = APIClient().post("/accounts/login/", {"username": "alice", "password": NEW_PASSWORD}, format="json")
    login_old = APIClient().post("/accounts/login/", {"username": "alice", "password": PASSWORD}, format="json")
    assert (login_new.status_code, login_old.status_code) == (200, 401)


def test_a_password_change_may_keep_the_other_devices(outbox):
    alice = make_user()
    tablet = login(alice)
    outbox.clear()

    response = alice.client.post(
        "/accounts/me/password/",
        {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "keep_other_devices": True},
        format="json",
    )

    assert response.status_code == 200
    assert tablet.client.get("/accounts/me/").status_code == 200
    assert outbox.rows == []
    assert User.objects.get(id=alice.id).check_password(NEW_PASSWORD)


@pytest.mark.parametrize(
    "body, status, code, field",
    [
        ({"current_password": "wrong password!", "new_password": NEW_PASSWORD}, 403, "wrong_password", "current_password"),
        ({"current_password": PASSWORD, "new_password": "short"}, 400, "validation_error", "new_password"),
        ({"current_password": PASSWORD, "new_password": "12345678901"}, 400, "validation_error", "new_password"),
        ({"new_password": NEW_PASSWORD}, 400, "validation_error", "current_password"),
        ({"current_password": PASSWORD, "new_password": NEW_PASSWORD, "keep": True}, 400, "validation_error", "keep"),
        ({"current_password": PASSWORD, "new_password": None}, 400, "validation_error", "new_password"),
    ],
)
def test_a_refused_password_change_changes_nothing(outbox, body, status, code, field):
    # given
    alice = make_user()
    tablet = login(alice)
    outbox.clear()

    # when
    response = alice.client.post("/accounts/me/password/", body, format="json")

    # then
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert field in response.json()["error"]["fields"]
    assert User.objects.get(id=alice.id).check_password(PASSWORD)
    assert tablet.client.get("/accounts/me/").status_code == 200
    assert outbox.rows == []


# --- devices ------------------------------------------------------------------------------


def test_the_device_list_names_each_device_and_marks_the_calling_one():
    # given: a phone signed up with a name, a tablet logged in with none but a User-Agent
    signup = APIClient().post(
        "/accounts/signup/", {"username": "alice", "password": PASSWORD, "device_name": "Pixel 8"}, format="json"
    ).json()
    phone = authed_client(signup["token"])
    tablet_token = APIClient().post(
        "/accounts/login/", {"username": "alice", "password": PASSWORD}, format="json",
        HTTP_USER_AGENT="okhttp/4.12.0\u0007",
    ).json()["token"]
    tablet = authed_client(tablet_token)
    assert tablet.get("/accounts/me/").status_code == 200  # a request: last seen now

    # when
    response = phone.get("/accounts/me/devices/")

    # then
    assert response.status_code == 200
    devices = {d.name: d for d in Device.objects.filter(user_id=signup["id"])}
    assert response.json() == [
        {
            "id": devices["okhttp/4.12.0"].id,
            "name": "okhttp/4.12.0",
            "created_at": devices["okhttp/4.12.0"].created_at.isoformat().replace("+00:00", "Z"),
            "last_seen_at": devices["okhttp/4.12.0"].last_seen_at.isoformat().replace("+00:00", "Z"),
            "current": False,
        },
        {
            "id": devices["Pixel 8"].id,
            "name": "Pixel 8",
            "created_at": devices["Pixel 8"].created_at.isoformat().replace("+00:00", "Z"),
            "last_seen_at": devices["Pixel 8"].last_seen_at.isoformat().replace("+00:00", "Z"),
            "current": True,
        },
    ]


def test_signing_another_device_out_is_what_logout_does_to_it(outbox):
    # given
    alice = make_user()
    tablet = login(alice)
    assert tablet.client.put("/accounts/me/push/", {"token": "fcm-tablet"}, format="json").status_code == 200
    outbox.clear()

    # when
    response = alice.client.delete(f"/accounts/me/devices/{tablet.device.id}/")

    # then
    assert response.status_code == 204
    assert tablet.client.get("/accounts/me/").status_code == 401
    assert alice.client.get("/accounts/me/").status_code == 200
    assert not Device.objects.filter(id=tablet.device.id).exists()
    (row,) = outbox.rows
    assert (row.type, row.access) == (None, [removed(tablet.device)])
    assert [d["id"] for d in alice.client.get("/accounts/me/devices/").json()] == [alice.device.id]


def test_another_users_device_is_not_found_and_stays(outbox):
    alice, bob = make_user(), make_user()
    outbox.clear()

    for device_id in (bob.device.id, 999999):
        response = alice.client.delete(f"/accounts/me/devices/{device_id}/")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "device_not_found"

    assert bob.client.get("/accounts/me/").status_code == 200
    assert outbox.rows == []


# --- avatar -------------------------------------------------------------------------------


def test_an_avatar_is_reencoded_with_a_thumbnail_and_told_to_friends(outbox, media_root):
    # given: a photo with metadata, bob a friend
    alice, bob = make_user("alice"), make_user("bob")
    friends(alice, bob)
    photo = png(2000, 1000, pnginfo=_pnginfo("GPS", "48.8584N 2.2945E"))
    outbox.clear()

    # when
    response = alice.client.put("/accounts/me/avatar/", {"file": upload("me.png", photo)}, format="multipart")

    # then: shown back, told, served to bob as a clean WebP of at most 1024 px
    assert response.status_code == 200, response.content
    avatar = response.json()["avatar"]
    assert avatar["url"].startswith(f"/accounts/{alice.id}/avatar/?v=")
    assert avatar["thumbnail_url"].startswith(f"/accounts/{alice.id}/avatar/thumbnail/?v=")
    (row,) = outbox.rows
    assert (row.type, row.user_ids, row.data["avatar"]) == (EventType.USER_UPDATED, sorted([alice.id, bob.id]), avatar)
    full = bob.client.get(avatar["url"])
    thumb = bob.client.get(avatar["thumbnail_url"])
    assert (full.status_code, full["Content-Type"], thumb["Content-Type"]) == (200, "image/webp", "image/webp")
    full_image = Image.open(io.BytesIO(b"".join(full.streaming_content)))
    thumb_image = Image.open(io.BytesIO(b"".join(thumb.streaming_content)))
    assert (full_image.format, full_image.size, thumb_image.size) == ("WEBP", (1024, 512), (320, 160))
    assert "GPS" not in full_image.info
    assert len([p for p in media_root.rglob("*") if p.is_file()]) == 2


def test_a_new_avatar_replaces_the_files_of_the_old_and_removing_it_deletes_them(
    media_root, django_capture_on_commit_callbacks
):
    alice = make_user()
    with django_capture_on_commit_callbacks(execute=True):
        first = alice.client.put("/accounts/me/avatar/", {"file": upload("a.png", png())}, format="multipart").json()
        second = alice.client.put("/accounts/me/avatar/", {"file": upload("b.png", png(30, 30))}, format="multipart")

    assert second.json()["avatar"]["url"] != first["avatar"]["url"]
    assert len([p for p in media_root.rglob("*") if p.is_file()]) == 2

    with django_capture_on_commit_callbacks(execute=True):
        assert alice.client.delete("/accounts/me/avatar/").status_code == 204
    assert alice.client.get("/accounts/me/").json()["avatar"] is None
    assert [p for p in media_root.rglob("*") if p.is_file()] == []
    missing = alice.client.get(f"/accounts/{alice.id}/avatar/")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "avatar_not_found")


@pytest.mark.parametrize(
    "name, data",
    [("x.png", b"not an image at all"), ("x.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64), ("x.html", b"<script>1</script>")],
)
def test_an_avatar_that_is_not_an_image_is_a_400_and_stores_nothing(outbox, media_root, name, data):
    alice = make_user()
    outbox.clear()

    response = alice.client.put("/accounts/me/avatar/", {"file": upload(name, data)}, format="multipart")

    assert response.status_code == 400
    assert "file" in response.json()["error"]["fields"]
    assert alice.client.get("/accounts/me/").json()["avatar"] is None
    assert [p for p in media_root.rglob("*") if p.is_file()] == []
    assert outbox.rows == []


def test_an_avatar_is_hidden_from_those_the_user_blocked():
    alice, bob = make_user(), make_user()
    avatar = alice.client.put("/accounts/me/avatar/", {"file": upload("a.png", png())}, format="multipart").json()
    assert alice.client.post(f"/accounts/{alice.id}/blocks/{bob.id}/").status_code == 201

    response = bob.client.get(avatar["avatar"]["url"])

    assert (response.status_code, response.json()["error"]["code"]) == (404, "user_not_found")


def _pnginfo(key, value):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(key, value)
    return info


# --- deleting one's account ---------------------------------------------------------------


def test_deleting_an_account_needs_the_password_and_changes_nothing_without_it(outbox):
    alice = make_user("alice")
    outbox.clear()

    for body, status in [({"password": "wrong password!"}, 403), ({}, 400), ({"password": PASSWORD, "x": 1}, 400)]:
        response = alice.client.delete("/accounts/me/", body, format="json")
        assert response.status_code == status, body

    assert alice.client.get("/accounts/me/").status_code == 200
    assert User.objects.get(id=alice.id).username == "alice"
    assert outbox.rows == []


def test_deleting_an_account(outbox, media_root, django_capture_on_commit_callbacks):
    # given: alice on two devices; bob a friend in a direct chat with her; carol in a
    # group alice owns, with bob; dave in a group of two with alice; erin asked alice for
    # friendship, and alice blocked frank
    alice, bob, carol, dave, erin, frank = (make_user(n) for n in ("alice", "bob", "carol", "dave", "erin", "frank"))
    tablet = login(alice)
    friends(alice, bob)
    dm = direct(alice, bob)
    alice.client.post(f"/chats/{dm}/messages/", {"content": "hi bob"}, format="json")
    team = group(alice, bob, carol)
    assert alice.client.patch(f"/chats/{team}/users/{carol.id}/", {"role": "admin"}, format="json").status_code == 200
    pair = group(dave, alice, name="pair")
    assert dave.client.delete(f"/chats/{pair}/users/{dave.id}/").status_code == 204  # alice is its last member
    assert erin.client.post(f"/accounts/{erin.id}/friends/{alice.id}/").status_code == 201
    assert alice.client.post(f"/accounts/{alice.id}/blocks/{frank.id}/").status_code == 201
    alice.client.put("/accounts/me/avatar/", {"file": upload("a.png", png())}, format="multipart")
    outbox.clear()

    # when
    with django_capture_on_commit_callbacks(execute=True):
        response = alice.client.delete("/accounts/me/", {"password": PASSWORD}, format="json")

    # then: both devices are signed out, on HTTP and at the broker
    assert response.status_code == 204
    assert alice.client.get("/accounts/me/").status_code == 401
    assert tablet.client.get("/accounts/me/").status_code == 401
    assert not Device.objects.filter(user_id=alice.id).exists()
    rows = outbox.rows
    [access] = [row.access for row in rows if row.type is None and any(isinstance(op, DeviceRemove) for op in row.access)]
    assert sorted(access, key=lambda op: op.username) == sorted(
        [removed(alice.device), removed(tablet.device)], key=lambda op: op.username
    )
    # the row stays, anonymised; its name is never free again
    user = User.objects.get(id=alice.id)
    assert (user.username, user.is_active, user.display_name, user.avatar) == (f"deleted-{alice.id}", False, "", "")
    assert not user.has_usable_password()
    assert [p for p in media_root.rglob("*") if p.is_file()] == []  # the avatar's files
    again = APIClient().post("/accounts/signup/", {"username": "ALICE", "password": PASSWORD}, format="json")
    assert (again.status_code, again.json()["error"]["code"]) == (409, "username_taken")
    login_again = APIClient().post("/accounts/login/", {"username": "alice", "password": PASSWORD}, format="json")
    assert login_again.status_code == 401
    # friendships, requests and blocks are gone
    assert not Friendship.objects.filter(user_id=alice.id).exists()
    assert not Friendship.objects.filter(friend_id=alice.id).exists()
    assert not FriendRequest.objects.filter(to_user_id=alice.id).exists()
    assert not Block.objects.filter(user_id=alice.id).exists()
    # groups: left, ownership passed to the admin; the group she was alone in is gone
    assert not Membership.objects.filter(user_id=alice.id, chat__kind=Chat.Kind.GROUP).exists()
    assert Membership.objects.get(chat_id=team, user_id=carol.id).role == "owner"
    assert not Chat.objects.filter(id=pair).exists()
    # the direct chat stays for bob, with her message under "Deleted user"
    assert bob.client.get(f"/chats/{dm}/").status_code == 200
    history = bob.client.get(f"/chats/{dm}/messages/").json()["results"]
    assert [(m["author"], m["content"]) for m in history] == [(alice.id, "hi bob")]
    assert Message.objects.filter(author_id=alice.id).count() == 1
    # who was told what
    told = {(row.type, tuple(row.user_ids)) for row in rows if row.type is not None}
    assert (EventType.MEMBER_REMOVED, tuple(sorted([alice.id, bob.id, carol.id]))) in told
    assert (EventType.MEMBER_UPDATED, tuple(sorted([bob.id, carol.id]))) in told
    assert (EventType.FRIEND_REMOVED, (bob.id,)) in told
    assert (EventType.FRIEND_REMOVED, (erin.id,)) in told
    [updated] = [row for row in rows if row.type == EventType.USER_UPDATED]
    assert updated.user_ids == [bob.id]
    assert updated.data == {
        "id": alice.id, "username": f"deleted-{alice.id}", "display_name": "Deleted user", "avatar": None,
        "presence": "offline", "last_seen": None, "deleted": True,
    }
    assert frank.id not in {uid for row in rows for uid in row.user_ids}
    assert bob.client.get(f"/accounts/{alice.id}/").status_code == 404


def test_a_deleted_name_prefix_is_reserved():
    response = APIClient().post("/accounts/signup/", {"username": "Deleted-7", "password": PASSWORD}, format="json")

    assert (response.status_code, response.json()["error"]["code"]) == (409, "username_taken")


# --- at the broker (real relay and broker) ---------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_signed_out_devices_are_cut_off_at_the_broker(relay, broker):
    # given: alice on a phone, a tablet and a laptop, all connected
    alice = make_user()
    tablet, laptop = login(alice), login(alice)
    probes = {}
    try:
        for name, who in (("phone", alice), ("tablet", tablet), ("laptop", laptop)):
            probes[name] = MqttProbe(broker.host, broker.port)
            assert probes[name].connect(**who.mqtt) == 0

        # when: the phone signs the tablet out, then changes the password
        assert alice.client.delete(f"/accounts/me/devices/{tablet.device.id}/").status_code == 204
        assert probes["tablet"].wait_disconnected(timeout=5)
        changed = alice.client.post(
            "/accounts/me/password/", {"current_password": PASSWORD, "new_password": NEW_PASSWORD}, format="json"
        )

        # then: the tablet and the laptop are cut off for good, the phone is untouched
        assert changed.status_code == 200
        assert probes["laptop"].wait_disconnected(timeout=5)
        assert probes["tablet"].connect(**tablet.mqtt) != 0
        assert probes["laptop"].connect(**laptop.mqtt) != 0
        assert not probes["phone"].disconnected.is_set()
    finally:
        for probe in probes.values():
            probe.close()


@pytest.mark.django_db(transaction=True)
def test_a_deleted_account_is_cut_off_at_the_broker_and_its_partner_told(relay, broker):
    # given: alice's phone connected; bob's phone listening, in a direct chat with her
    alice, bob = make_user(), make_user()
    direct(alice, bob)
    alice_probe = MqttProbe(broker.host, broker.port)
    bob_probe = MqttProbe(broker.host, broker.port)
    try:
        assert alice_probe.connect(**alice.mqtt) == 0
        assert bob_probe.connect(**bob.mqtt) == 0
        assert bob_probe.subscribe(f"chat/users/{bob.id}") in (0, 1)

        # when
        assert alice.client.delete("/accounts/me/", {"password": PASSWORD}, format="json").status_code == 204

        # then
        assert alice_probe.wait_disconnected(timeout=5)
        assert alice_probe.connect(**alice.mqtt) != 0
        wait_until(lambda: any(b'"user.updated"' in m.payload for m in bob_probe.messages), 10, "user.updated")
        [event] = [json.loads(m.payload) for m in bob_probe.messages if b'"user.updated"' in m.payload]
        assert (event["data"]["id"], event["data"]["deleted"]) == (alice.id, True)
    finally:
        alice_probe.close()
        bob_probe.close()


def test_password_guesses_through_a_password_change_or_a_deletion_are_throttled(settings):
    # given: a stolen token, and a thief guessing the password behind it
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "auth": "30/minute"}}
    alice = make_user()
    guesses = [
        alice.client.post(
            "/accounts/me/password/", {"current_password": f"guess {i}", "new_password": NEW_PASSWORD}, format="json"
        ).status_code
        for i in range(20)
    ] + [alice.client.delete("/accounts/me/", {"password": f"guess {i}"}, format="json").status_code for i in range(11)]

    # then: 30 a minute (AUTH_THROTTLE_RATE), whichever way
    assert guesses[:30] == [403] * 30
    assert guesses[30] == 429
    assert alice.client.get("/accounts/me/").status_code == 200  # reading is not limited
