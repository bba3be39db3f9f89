"""Push tokens per device: registered, replaced, moved, removed, never shown."""

import pytest

from accounts.models import Device
from tests.support.factories import login, make_user

pytestmark = pytest.mark.django_db

TOKEN = "fcm:APA91bH-example_token-1234567890"


def token_of(user) -> str | None:
    return Device.objects.get(id=user.device.id).push_token


def test_a_device_registers_and_replaces_its_token_which_is_never_shown():
    # given
    alice = make_user()

    # when
    first = alice.client.put("/accounts/me/push/", {"token": TOKEN}, format="json")
    second = alice.client.put("/accounts/me/push/", {"token": TOKEN + "b"}, format="json")

    # then
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json()["push"] is True
    assert TOKEN not in first.content.decode() + second.content.decode()
    assert token_of(alice) == TOKEN + "b"
    assert TOKEN not in alice.client.get("/accounts/me/").content.decode()


def test_a_token_registered_by_another_device_moves_to_this_one():
    # given: the app reinstalled, or the phone passed to somebody else
    alice, bob = make_user(), make_user()
    alice.client.put("/accounts/me/push/", {"token": TOKEN}, format="json")

    # when
    response = bob.client.put("/accounts/me/push/", {"token": TOKEN}, format="json")

    # then
    assert response.status_code == 200
    assert (token_of(alice), token_of(bob)) == (None, TOKEN)


def test_delete_removes_only_this_device_s_token():
    alice = make_user()
    phone, tablet = alice, login(alice)
    phone.client.put("/accounts/me/push/", {"token": TOKEN}, format="json")
    tablet.client.put("/accounts/me/push/", {"token": TOKEN + "t"}, format="json")

    response = phone.client.delete("/accounts/me/push/")

    assert response.status_code == 204
    assert (token_of(phone), token_of(tablet)) == (None, TOKEN + "t")
    assert phone.client.get("/accounts/me/").json()["push"] is False


def test_logout_removes_the_token_with_the_device():
    alice = make_user()
    alice.client.put("/accounts/me/push/", {"token": TOKEN}, format="json")

    alice.client.post("/accounts/logout/")

    assert not Device.objects.filter(push_token=TOKEN).exists()


@pytest.mark.parametrize("body", [
    {}, {"token": ""}, {"token": 5}, {"token": None}, {"token": "has space"},
    {"token": "x" * 1025}, {"token": "caf\u00e9"}, {"token": "line\nbreak"}, [TOKEN],
])
def test_bad_bodies_are_400_and_change_nothing(body):
    alice = make_user()
    alice.client.put("/accounts/me/push/", {"token": TOKEN}, format="json")

    response = alice.client.put("/accounts/me/push/", body, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert token_of(alice) == TOKEN


def test_without_a_token_it_is_401():
    from rest_framework.test import APIClient

    response = APIClient().put("/accounts/me/push/", {"token": TOKEN}, format="json")

    assert response.status_code == 401
    assert not Device.objects.filter(push_token=TOKEN).exists()


def test_push_previews_is_a_setting_of_the_user():
    alice = make_user()

    response = alice.client.patch("/accounts/me/", {"push_previews": False}, format="json")

    assert response.status_code == 200
    assert response.json()["settings"] == {"read_receipts": True, "push_previews": False}
    assert alice.client.get("/accounts/me/").json()["settings"]["push_previews"] is False
