"""The broker's auth endpoints (chatserver/broker_auth.py), with Django's test client: the
form fields RabbitMQ 3.10's HTTP backend POSTs, every rule, malformed input, the secret,
the login limit, and a database that cannot be reached. What a real RabbitMQ node does
with these answers: tests/chatserver/test_rabbitmq_access.py."""

import json

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client

from accounts.models import User
from tests.support.factories import group_chat, login, make_user

pytestmark = pytest.mark.django_db


def ask(kind: str, secret: str | None = None, **fields) -> tuple[int, str]:
    response = Client().post(f"/broker-auth/{secret or settings.BROKER_AUTH_SECRET}/{kind}", fields)
    return response.status_code, response.content.decode()


def login_fields(user, **overrides) -> dict:
    return {"username": user.device.mqtt_username, "password": user.device.mqtt_password, "vhost": "/",
            "client_id": user.device.mqtt_client_id, **overrides}


def resource_fields(user, **overrides) -> dict:
    return {"username": user.device.mqtt_username, "vhost": "/", "resource": "queue",
            "name": f"mqtt-subscription-{user.device.mqtt_client_id}qos1", "permission": "configure",
            "client_id": user.device.mqtt_client_id, **overrides}


def topic_fields(user, routing_key: str, permission: str = "read", **overrides) -> dict:
    return {"username": user.device.mqtt_username, "vhost": "/", "resource": "topic", "name": "amq.topic",
            "permission": permission, "routing_key": routing_key,
            "variable_map.client_id": user.device.mqtt_client_id,
            "variable_map.username": user.device.mqtt_username, "variable_map.vhost": "/", **overrides}


ALLOW, DENY = (200, "allow"), (200, "deny")


# --- login ----------------------------------------------------------------------------------


def test_a_device_logs_in_with_its_password_and_its_own_client_id():
    alice = make_user()

    assert ask("user", **login_fields(alice)) == ALLOW


@pytest.mark.parametrize(
    "override",
    [
        {"password": "0" * 64},
        {"password": ""},
        # Another device's client id (of the same user, or of someone else): no takeover,
        # no kicking the victim's session.
        {"client_id": "chat-1-999999"},
        {"client_id": ""},
        {"vhost": "other"},
        {"username": "device-999999"},
        {"username": "alice"},
        {"username": "device-01"},
    ],
)
def test_a_login_is_refused_for_anything_but_the_device_itself(override):
    alice = make_user()

    assert ask("user", **login_fields(alice, **override)) == DENY


def test_a_login_with_the_client_id_of_another_device_of_the_same_user_is_refused():
    alice = make_user()
    phone = login(alice)

    assert ask("user", **login_fields(alice, client_id=phone.device.mqtt_client_id)) == DENY
    assert ask("user", **login_fields(phone)) == ALLOW


def test_a_signed_out_device_and_a_deactivated_user_cannot_log_in():
    alice, bob = make_user(), make_user()
    fields_alice, fields_bob = login_fields(alice), login_fields(bob)

    assert alice.client.post("/accounts/logout/").status_code == 204
    user = User.objects.get(id=bob.id)
    user.is_active = False
    user.save()

    assert ask("user", **fields_alice) == DENY
    assert ask("user", **fields_bob) == DENY


def test_the_servers_own_account_is_refused_here_whatever_it_sends():
    assert ask("user", username=settings.MQTT_ADMIN_USERNAME, password=settings.MQTT_ADMIN_PASSWORD,
               vhost="/", client_id="chat-relay-host-1") == DENY


def test_refused_logins_of_one_account_start_a_cooldown_that_spares_its_other_devices(settings):
    # given
    settings.MQTT_LOGIN_FAILURES, settings.MQTT_LOGIN_WINDOW, settings.MQTT_LOGIN_COOLDOWN = 3, 60, 60
    alice = make_user()
    phone = login(alice)

    # when: three failures are tolerated; the fourth starts the cooldown
    answers = [ask("user", **login_fields(alice, password="x")) for _ in range(4)]

    # then: the right password is refused during it, unchecked; the other device is not
    assert answers == [DENY] * 4
    assert ask("user", **login_fields(alice)) == DENY
    assert ask("user", **login_fields(phone)) == ALLOW


def test_good_logins_do_not_count_against_the_limit(settings):
    settings.MQTT_LOGIN_FAILURES = 2
    alice = make_user()

    answers = [ask("user", **login_fields(alice)) for _ in range(5)]
    answers.append(ask("user", **login_fields(alice, password="x")))
    answers.append(ask("user", **login_fields(alice)))

    assert answers == [ALLOW] * 5 + [DENY, ALLOW]


# --- vhost and resources ---------------------------------------------------------------------


def test_vhost_slash_only_and_only_for_a_device_with_its_client_id():
    alice = make_user()
    base = {"username": alice.device.mqtt_username, "ip": "127.0.0.1", "client_id": alice.device.mqtt_client_id}

    assert ask("vhost", **base, vhost="/") == ALLOW
    assert ask("vhost", **base | {"vhost": "other"}) == DENY
    assert ask("vhost", **base | {"vhost": "/", "client_id": "chat-9-9"}) == DENY


@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("permission", ["configure", "read", "write"])
def test_a_device_may_use_its_own_session_queues(qos, permission):
    alice = make_user()
    name = f"mqtt-subscription-{alice.device.mqtt_client_id}qos{qos}"

    assert ask("resource", **resource_fields(alice, name=name, permission=permission)) == ALLOW


def test_a_device_may_bind_to_and_publish_on_amq_topic_and_not_configure_it():
    alice = make_user()

    assert ask("resource", **resource_fields(alice, resource="exchange", name="amq.topic", permission="read")) == ALLOW
    assert ask("resource", **resource_fields(alice, resource="exchange", name="amq.topic", permission="write")) == ALLOW
    assert ask("resource", **resource_fields(alice, resource="exchange", name="amq.topic",
                                             permission="configure")) == DENY


@pytest.mark.parametrize(
    "override",
    [
        {"name": "mqtt-subscription-chat-1-999999qos1"},  # another device's session
        {"name": "mqtt-subscription-chat-1-1qos1", "client_id": "chat-1-1"},  # presenting its id
        {"name": "some-queue"},
        {"resource": "exchange", "name": "amq.direct", "permission": "write"},
        {"resource": "exchange", "name": "amq.fanout", "permission": "read"},
        {"vhost": "other"},
    ],
)
def test_other_queues_and_exchanges_are_refused(override):
    alice = make_user()

    assert ask("resource", **resource_fields(alice, **override)) == DENY


# --- topics ------------------------------------------------------------------------------


def test_a_device_reads_its_user_topic_and_its_chats_and_nothing_else():
    alice, bob, carol = make_user(), make_user(), make_user()
    ours = group_chat(alice, bob)
    theirs = group_chat(bob, carol)

    assert ask("topic", **topic_fields(alice, f"chat.users.{alice.id}")) == ALLOW
    assert ask("topic", **topic_fields(alice, f"chat.chats.{ours}")) == ALLOW
    assert ask("topic", **topic_fields(alice, f"chat.chats.{ours}.typing")) == ALLOW
    assert ask("topic", **topic_fields(alice, f"chat.users.{bob.id}")) == DENY
    assert ask("topic", **topic_fields(alice, f"chat.chats.{theirs}")) == DENY
    assert ask("topic", **topic_fields(alice, f"chat.chats.{theirs}.typing")) == DENY
    assert ask("topic", **topic_fields(alice, f"chat.chats.{ours}.other")) == DENY
    assert ask("topic", **topic_fields(alice, f"chat.users.{alice.id}.typing")) == DENY
    assert ask("topic", **topic_fields(alice, f"chat.chats.0{ours}")) == DENY
    assert ask("topic", **topic_fields(alice, "chat.chats.999999")) == DENY
    assert ask("topic", **topic_fields(alice, f"chat.presence.{bob.id}.{bob.device.mqtt_client_id}")) == DENY


@pytest.mark.parametrize("routing_key", ["#", "chat.#", "chat.users.#", "chat.users.*", "chat.chats.*", "*.*.*",
                                         "chat.chats.*.typing",
                                         "chat.presence.*.*", "chat.presence.#"])
def test_wildcards_are_refused(routing_key):
    alice = make_user()

    assert ask("topic", **topic_fields(alice, routing_key)) == DENY


def test_a_removed_member_may_no_longer_subscribe_to_the_chat():
    alice, bob = make_user(), make_user()
    chat = group_chat(alice, bob)
    assert ask("topic", **topic_fields(bob, f"chat.chats.{chat}")) == ALLOW

    assert alice.client.delete(f"/chats/{chat}/users/{bob.id}/").status_code == 204

    assert ask("topic", **topic_fields(bob, f"chat.chats.{chat}")) == DENY
    assert ask("topic", **topic_fields(bob, f"chat.chats.{chat}.typing")) == DENY
    assert ask("topic", **topic_fields(alice, f"chat.chats.{chat}")) == ALLOW


def test_a_device_publishes_on_its_own_presence_topic_only():
    alice, bob = make_user(), make_user()
    phone = login(alice)
    own = f"chat.presence.{alice.id}.{alice.device.mqtt_client_id}"

    assert ask("topic", **topic_fields(alice, own, "write")) == ALLOW
    assert ask("topic", **topic_fields(alice, f"chat.presence.{alice.id}.{phone.device.mqtt_client_id}",
                                       "write")) == DENY
    assert ask("topic", **topic_fields(alice, f"chat.presence.{bob.id}.{bob.device.mqtt_client_id}",
                                       "write")) == DENY
    assert ask("topic", **topic_fields(alice, f"chat.users.{alice.id}", "write")) == DENY
    chat = group_chat(alice, bob)
    assert ask("topic", **topic_fields(alice, f"chat.chats.{chat}.typing", "write")) == DENY
    assert ask("topic", **topic_fields(alice, own, "configure")) == DENY
    # Reading presence is the server's: devices learn it from events.
    assert ask("topic", **topic_fields(alice, own, "read")) == DENY


def test_topic_checks_need_the_connection_to_be_the_device_itself():
    alice = make_user()
    phone = login(alice)
    topic = f"chat.users.{alice.id}"

    assert ask("topic", **topic_fields(alice, topic, **{"variable_map.client_id": phone.device.mqtt_client_id})) == DENY
    assert ask("topic", **topic_fields(alice, topic, name="amq.direct")) == DENY
    phone.client.post("/accounts/logout/")
    assert ask("topic", **topic_fields(phone, topic)) == DENY


# --- the endpoint itself ---------------------------------------------------------------------------


NOT_FOUND = {"error": {"code": "not_found", "message": "No such endpoint."}}


@pytest.mark.parametrize("secret", ["wrong", "x" * 43, ""])
def test_a_wrong_secret_is_not_found(secret):
    alice = make_user()

    response = Client().post(f"/broker-auth/{secret}/user", login_fields(alice))

    assert (response.status_code, json.loads(response.content)) == (404, NOT_FOUND)


def test_an_unknown_check_is_not_found_and_a_get_is_refused():
    response = Client().post(f"/broker-auth/{settings.BROKER_AUTH_SECRET}/acl", {})
    assert (response.status_code, json.loads(response.content)) == (404, NOT_FOUND)

    response = Client().get(f"/broker-auth/{settings.BROKER_AUTH_SECRET}/user")
    assert response.status_code == 405
    assert json.loads(response.content)["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    "kind, fields",
    [
        ("user", {"password": "x"}),
        ("user", {"username": "device-1", "password": "x" * 2000}),
        ("vhost", {"username": "device-1"}),
        ("resource", {"username": "device-1", "vhost": "/", "resource": "queue", "name": "q"}),
        ("resource", {"username": "device-1", "vhost": "/", "resource": "vhost", "name": "q", "permission": "read"}),
        ("resource", {"username": "device-1", "vhost": "/", "resource": "queue", "name": "q", "permission": "all"}),
        ("topic", {"username": "device-1", "vhost": "/", "resource": "queue", "name": "amq.topic",
                   "permission": "read", "routing_key": "a"}),
        ("topic", {"username": "device-1", "vhost": "/", "resource": "topic", "name": "amq.topic",
                   "permission": "read"}),
        ("topic", {"username": "device-1\x00", "vhost": "/", "resource": "topic", "name": "amq.topic",
                   "permission": "read", "routing_key": "a"}),
    ],
)
def test_a_malformed_check_is_a_400_in_the_envelope(kind, fields):
    status, body = ask(kind, **fields)

    assert status == 400
    assert json.loads(body)["error"]["code"] == "bad_request"


def test_a_body_that_is_not_a_form_is_a_400():
    response = Client().post(f"/broker-auth/{settings.BROKER_AUTH_SECRET}/user", b"\xff\xfe{",
                             content_type="application/json")

    assert response.status_code == 400


@pytest.mark.django_db(transaction=True)
def test_every_check_is_denied_while_the_database_cannot_be_reached():
    # given: a device that could log in, and a database that stops answering (its
    # connection pointed at a port nothing listens on)
    alice = make_user()
    fields = login_fields(alice)
    assert ask("user", **fields) == ALLOW
    real_port = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = "1"
    try:
        # when
        answers = [ask("user", **fields), ask("vhost", username=fields["username"], vhost="/",
                                              client_id=fields["client_id"]),
                   ask("topic", **topic_fields(alice, f"chat.users.{alice.id}"))]
    finally:
        connection.close()
        connection.settings_dict["PORT"] = real_port

    # then
    assert answers == [DENY] * 3
    assert ask("user", **fields) == ALLOW


@pytest.mark.parametrize("store", ["database", "redis"])
def test_the_cooldown_holds_in_either_rate_limit_store(request, settings, store):
    # given: the login limit in the database's buckets, or in Redis (REDIS_URL)
    if store == "redis":
        settings.REDIS_URL = request.getfixturevalue("redis_url")
    settings.MQTT_LOGIN_FAILURES, settings.MQTT_LOGIN_COOLDOWN = 1, 60
    alice = make_user()

    # when: one failure tolerated, the second starts the cooldown
    answers = [ask("user", **login_fields(alice, password="x")) for _ in range(2)]

    # then
    assert answers == [DENY, DENY]
    assert ask("user", **login_fields(alice)) == DENY
