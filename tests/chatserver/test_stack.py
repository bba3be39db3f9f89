"""The stack over real sockets: nginx, granian, the relay, Mosquitto and PostgreSQL."""

import json

import pytest

from tests.support.mqtt import MqttProbe
from tests.support.stack import call, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def test_health_reports_database_relay_and_broker(live_stack):
    status, body = call(f"{live_stack.url}/health/")

    assert status == 200
    assert body["status"] == "ok"
    assert body["database"] == "up"
    assert body["relay"] == "running"
    assert body["broker"] == "up"
    assert isinstance(body["outbox_pending"], int)
    assert isinstance(body["outbox_oldest_age_s"], float)


def test_health_says_degraded_while_the_broker_is_down(live_stack):
    live_stack.broker.stop()
    try:
        def degraded():
            status, body = call(f"{live_stack.url}/health/")
            return status == 200 and body["broker"] == "down" and body["status"] == "degraded"

        wait_until(degraded, 10, "/health/ to report the broker down")
    finally:
        live_stack.broker.start()
    wait_until(lambda: call(f"{live_stack.url}/health/")[1]["broker"] == "up", 15, "the broker back up")


def test_a_phone_signs_up_chats_and_receives_over_real_sockets(live_stack):
    # given: two phones signed up over HTTP, one listening over MQTT
    url = live_stack.url
    _, alice = call(f"{url}/accounts/signup", "POST", {"username": "alice-live", "password": "pass word 123"})
    _, bob = call(f"{url}/accounts/signup", "POST", {"username": "bob-live", "password": "pass word 123"})
    status, chat = call(f"{url}/chats", "POST", {"members": [bob["id"]]}, alice["token"])
    assert status == 201
    assert bob["mqtt"]["host"] == "127.0.0.1"
    bob_phone = MqttProbe(bob["mqtt"]["host"], bob["mqtt"]["port"])
    try:
        m = bob["mqtt"]
        assert bob_phone.connect(m["username"], m["password"], m["client_id"]) == 0
        assert bob_phone.subscribe(m["user_topic"]) == 1
        assert bob_phone.subscribe(f"chat/chats/{chat['id']}") == 1

        # when: a POST without the trailing slash
        status, message = call(f"{url}/chats/{chat['id']}/messages", "POST", {"content": "hi bob"}, alice["token"])

        # then
        assert status == 201
        received = bob_phone.wait_for(2, timeout=10)
        assert {r.topic for r in received} == {m["user_topic"], f"chat/chats/{chat['id']}"}
        assert all(json.loads(r.payload)["data"] == message for r in received)
    finally:
        bob_phone.close()
