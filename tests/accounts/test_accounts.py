"""Signup, login, logout and me over HTTP (in-process), with their outbox rows."""

import pytest
from rest_framework.test import APIClient

from accounts.models import Device, User
from chatserver.models import OutboxEvent
from tests.support.factories import PASSWORD, authed_client, make_user

pytestmark = pytest.mark.django_db


def post(client, path, body=None, **kwargs):
    return client.post(path, body, format="json", **kwargs)


def test_signup_returns_token_and_mqtt_credentials_and_queues_broker_accounts():
    # when
    response = post(APIClient(), "/accounts/signup/", {"username": "alice", "password": PASSWORD})

    # then
    assert response.status_code == 201
    body = response.json()
    user = User.objects.get(username="alice")
    device = Device.objects.get(user=user)
    assert body["id"] == user.id
    assert body["username"] == "alice"
    assert isinstance(body["token"], str) and len(body["token"]) >= 40
    assert body["mqtt"] == {
        "host": "testserver",
        "port": 1883,
        "ws_port": 9001,
        "tls_port": None,  # the suite's broker has no TLS (tests/chatserver/test_tls.py)
        "wss_port": None,
        "plaintext": True,
        "username": f"device-{device.id}",
        "password": device.mqtt_password,
        "client_id": f"chat-{user.id}-{device.id}",
        "user_topic": f"chat/users/{user.id}",
        "keepalive": 30,
    }
    assert body["settings"] == {"read_receipts": True, "push_previews": True}
    assert body["push"] is False

    # only a hash of the token is stored
    assert body["token"] not in device.token_hash
    [event] = OutboxEvent.objects.all()
    assert event.payload == ""
    assert event.access == [
        {"op": "user_add", "user": user.id},
        {
            "op": "device_add",
            "user": user.id,
            "username": f"device-{device.id}",
            "password": device.mqtt_password,
            "client_id": f"chat-{user.id}-{device.id}",
        },
    ]


def test_the_mqtt_block_names_the_tls_ports_and_whether_plaintext_is_offered(settings):
    settings.MQTT_TLS, settings.MQTT_PLAINTEXT = True, False
    settings.MQTT_PUBLIC_TLS_PORT, settings.MQTT_PUBLIC_WSS_PORT = 8883, 9443

    body = post(APIClient(), "/accounts/signup/", {"username": "alice", "password": PASSWORD}).json()

    mqtt = body["mqtt"]
    assert (mqtt["plaintext"], mqtt["port"], mqtt["ws_port"], mqtt["tls_port"], mqtt["wss_port"]) == (
        False, None, None, 8883, 9443)


def test_signup_refuses_a_taken_name_whatever_its_case():
    # given
    make_user("Alice")

    # when
    response = post(APIClient(), "/accounts/signup/", {"username": "aLiCe", "password": PASSWORD})

    # then
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "username_taken"
    assert User.objects.count() == 1
    assert OutboxEvent.objects.count() == 1  # only the first signup's


@pytest.mark.parametrize(
    "body, field",
    [
        ({"username": "bob", "password": "short"}, "password"),
        ({"username": "bob", "password": "12345678901"}, "password"),
        ({"username": "bo", "password": PASSWORD}, "username"),
        ({"username": "bob smith", "password": PASSWORD}, "username"),
        ({"username": "bob/../x", "password": PASSWORD}, "username"),
        ({"username": "b" * 33, "password": PASSWORD}, "username"),
        ({"username": 42, "password": PASSWORD}, "username"),
        ({"username": ["bob"], "password": PASSWORD}, "username"),
        ({"password": PASSWORD}, "username"),
        ({"username": "bob"}, "password"),
        ({"username": "bob", "password": None}, "password"),
    ],
)
def test_signup_rejects_bad_input_with_field_errors(body, field):
    response = post(APIClient(), "/accounts/signup/", body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"]
    assert User.objects.count() == 0
    assert OutboxEvent.objects.count() == 0


def test_login_opens_a_new_device_with_its_own_token_and_mqtt_account():
    # given
    alice = make_user("alice")

    # when
    response = post(APIClient(), "/accounts/login/", {"username": "ALICE", "password": PASSWORD})

    # then
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == alice.id
    assert body["token"] != alice.token
    assert body["mqtt"]["username"] != alice.mqtt["username"]
    assert body["mqtt"]["client_id"] != alice.mqtt["client_id"]
    assert Device.objects.filter(user_id=alice.id).count() == 2


@pytest.mark.parametrize("username, password", [("alice", "wrong password!"), ("nobody", PASSWORD)])
def test_login_with_wrong_credentials_is_401_and_opens_no_device(username, password):
    # given
    make_user("alice")

    # when
    response = post(APIClient(), "/accounts/login/", {"username": username, "password": password})

    # then
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"
    assert Device.objects.count() == 1
    assert OutboxEvent.objects.count() == 1  # the signup's


@pytest.mark.parametrize("scheme", ["Token", "Bearer", "token", "bearer"])
def test_me_accepts_token_and_bearer(scheme):
    # given
    alice = make_user("alice")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {alice.token}")

    # when
    response = client.get("/accounts/me/")

    # then
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == alice.id
    assert body["username"] == "alice"
    assert body["mqtt"]["password"] == alice.mqtt["password"]
    assert "token" not in body


@pytest.mark.parametrize(
    "header",
    [None, "Token", "Token nope", "Token a b", "Basic dXNlcjpwYXNz", "Bearer \u00e9t\u00e9"],
)
def test_me_without_a_valid_token_is_401(header):
    make_user("alice")
    client = APIClient()
    if header is not None:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/accounts/me/")

    assert response.status_code == 401
    assert response.json()["error"]["code"] in {"not_authenticated", "invalid_token"}


def test_logout_revokes_that_device_only():
    # given
    alice = make_user("alice")
    other_device = authed_client(
        post(APIClient(), "/accounts/login/", {"username": "alice", "password": PASSWORD}).json()["token"]
    )
    OutboxEvent.objects.all().delete()

    # when
    response = alice.client.post("/accounts/logout/")

    # then
    assert response.status_code == 204
    assert alice.client.get("/accounts/me/").status_code == 401
    assert other_device.get("/accounts/me/").status_code == 200
    [event] = OutboxEvent.objects.all()
    assert event.access == [
        {
            "op": "device_remove",
            "username": alice.mqtt["username"],
            "user": alice.id,
            "client_id": alice.mqtt["client_id"],
        }
    ]


def test_user_profile_shows_presence_and_404s_for_unknown_ids():
    alice = make_user("alice")
    bob = make_user("bob")

    response = alice.client.get(f"/accounts/{bob.id}/")
    assert response.status_code == 200
    assert response.json() == {
        "id": bob.id, "username": "bob", "display_name": "", "avatar": None, "presence": "offline",
        "last_seen": None, "deleted": False,
    }

    missing = alice.client.get("/accounts/999999/")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "user_not_found"
    assert alice.client.get("/accounts/99999999999999999999/").status_code == 404


def test_malformed_json_and_wrong_content_type_are_4xx():
    client = APIClient()

    broken = client.post("/accounts/signup/", "{not json", content_type="application/json")
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "malformed_body"

    not_an_object = client.post("/accounts/signup/", "[1, 2]", content_type="application/json")
    assert not_an_object.status_code == 400
    assert not_an_object.json()["error"]["code"] == "validation_error"

    form = client.post("/accounts/signup/", "username=a", content_type="text/plain")
    assert form.status_code == 415
    assert form.json()["error"]["code"] == "unsupported_media_type"

    empty = client.post("/accounts/signup/", "", content_type="application/json")
    assert empty.status_code == 400
    assert User.objects.count() == 0


def test_signup_and_login_are_throttled_per_address(settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "auth": "30/minute"}}
    client = APIClient()
    statuses = [
        post(client, "/accounts/login/", {"username": f"nobody{i}", "password": "wrong password!"}).status_code
        for i in range(31)
    ]
    assert statuses[:30] == [401] * 30
    assert statuses[30] == 429
