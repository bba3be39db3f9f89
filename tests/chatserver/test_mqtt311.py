"""The server's own connections over MQTT 3.1.1 (MQTT_PROTOCOL=3.1.1; RabbitMQ 3.10 speaks
no other), on the session's Mosquitto: what 3.1.1 cannot say, and the relay without it.

- A QoS 1 PUBACK and the dynamic-security commands work as over MQTT 5.
- A publish the broker refuses is a silent success over 3.1.1 (MQTT 5 names the reason).
- A row whose publish makes the broker drop the connection (here: a packet above
  Mosquitto's max_packet_size; on RabbitMQ, any forbidden publish) ends in the dead
  letters after RELAY_MAX_DROPS drops with it alone in flight, and the rows around it are
  delivered in order.
- A whole stack (relay over 3.1.1, granian, phones) delivers every accepted message in
  per-chat order through a relay killed and restarted mid-load.

The whole relay and presence suite runs over 3.1.1 with `MQTT_PROTOCOL=3.1.1 pytest ...`
(tests/support/stack.py hands the suite's MQTT_PROTOCOL to every server process).
"""

import json
import secrets
import time

import pytest

from chatserver.models import DeadLetter, OutboxEvent
from chatserver.mqtt import BrokerConnection
from chatserver.relay import Relay
from tests.support.faults import ChatWorld, SteadyLoad, own_stack
from tests.support.mosquitto import MosquittoBroker, make_workdir
from tests.support.mqtt import MqttProbe
from tests.support.stack import wait_until

USER = 900_000_311
TOPIC = f"chat/users/{USER}"
# Above broker/mosquitto.conf's max_packet_size (266240), below what the relay is told it
# may send in the test.
OVERSIZED = 300 * 1024


def connection(broker, protocol: str = "3.1.1") -> BrokerConnection:
    conn = BrokerConnection(
        host=broker.host, port=broker.port, username=broker.admin_username, password=broker.admin_password,
        client_id=f"test-311-{secrets.token_hex(4)}", keepalive=10, protocol=protocol,
    )
    assert conn.connect(timeout=10)
    return conn


@pytest.fixture
def observer(mosquitto):
    probe = MqttProbe(mosquitto.host, mosquitto.port)
    assert probe.connect(mosquitto.admin_username, mosquitto.admin_password,
                         f"test-observer-{secrets.token_hex(4)}", clean_session=True) == 0
    assert probe.subscribe(TOPIC) == 1
    yield probe
    probe.close()


def numbers(probe: MqttProbe) -> list[int]:
    return [json.loads(payload)["n"] for payload in probe.messages_on(TOPIC)]


# --- the connection --------------------------------------------------------------------------


def test_over_3_1_1_a_publish_is_acknowledged_and_dynsec_commands_are_answered(mosquitto, observer):
    conn = connection(mosquitto)
    try:
        # when
        published = conn.publish(TOPIC, b'{"n": 1}')
        command = conn.control([{"command": "getDefaultACLAccess"}])

        # then
        assert conn.wait([published, command], timeout=5)
        assert published.error is None
        [(sent, error)] = command.result
        assert (sent["command"], error) == ("getDefaultACLAccess", None)
        assert {a["acltype"]: a["allow"] for a in command.responses[0]["data"]["acls"]}["subscribe"] is False
        wait_until(lambda: numbers(observer) == [1], 5, "the observer to get it")
    finally:
        conn.close()


@pytest.mark.parametrize("protocol, error", [("5", "Not authorized"), ("3.1.1", None)])
def test_a_refused_publish_is_named_over_mqtt_5_and_a_silent_success_over_3_1_1(mosquitto, protocol, error):
    # given: a topic outside the server's publish grant (chat/#)
    conn = connection(mosquitto, protocol)
    try:
        # when
        pending = conn.publish("elsewhere/311", b"x")

        # then
        assert conn.wait([pending], timeout=5)
        assert pending.error == error
    finally:
        conn.close()


# --- the relay ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_row_that_makes_the_broker_drop_the_connection_ends_a_dead_letter_and_the_others_flow(
    mosquitto, observer, settings
):
    # given: the relay over 3.1.1, allowed to send more than the broker takes; rows 0..2,
    # then one above the broker's packet limit, then 3..5 (in the test's transaction: the
    # session's relay process does not see them)
    settings.MQTT_HOST, settings.MQTT_PORT = mosquitto.host, mosquitto.port
    settings.MQTT_ADMIN_USERNAME, settings.MQTT_ADMIN_PASSWORD = mosquitto.admin_username, mosquitto.admin_password
    settings.MQTT_PLAINTEXT, settings.MQTT_PROTOCOL = True, "3.1.1"
    settings.RELAY_MAX_DROPS = 3
    for n in (0, 1, 2, "big", 3, 4, 5):
        payload = json.dumps({"n": n, "pad": "x" * OVERSIZED} if n == "big" else {"n": n})
        OutboxEvent.objects.create(payload=payload, user_ids=[USER], partition_key=USER)
    relay = Relay()
    relay.broker.max_payload = 1024 * 1024
    relay.heartbeat = lambda **kwargs: None
    relay.activated()
    assert relay.broker.protocol == "3.1.1"

    class NoSession:
        def wait(self, timeout: float) -> bool:
            return False

    # when: it runs until the outbox is empty (the broker drops it on each try of the big row)
    try:
        deadline = time.monotonic() + 60
        while OutboxEvent.objects.exists() and time.monotonic() < deadline:
            if not relay.step(session=NoSession()):
                time.sleep(0.1)
    finally:
        relay.close()

    # then: the big row set aside with why, every other row delivered, in order
    assert not OutboxEvent.objects.exists()
    letter = DeadLetter.objects.get()
    assert json.loads(letter.payload)["n"] == "big"
    assert letter.error == "the broker dropped the connection 3 times with this row in flight alone"
    wait_until(lambda: sorted(set(numbers(observer))) == [0, 1, 2, 3, 4, 5], 5, "the good rows")
    first_copies = list(dict.fromkeys(numbers(observer)))
    assert first_copies == [0, 1, 2, 3, 4, 5]


# --- a whole stack over 3.1.1 ------------------------------------------------------------------


@pytest.fixture
def stack_311(fault_cluster, tmp_path):
    broker_dir = make_workdir("chat-311-mqtt-")
    with own_stack(fault_cluster, MosquittoBroker(broker_dir), broker_dir, tmp_path,
                   env={"MQTT_PROTOCOL": "3.1.1"}) as stack:
        yield stack


@pytest.mark.slow
def test_a_stack_over_3_1_1_delivers_everything_in_order_through_a_relay_kill(stack_311):
    stack = stack_311
    world = ChatWorld(stack)  # signups and chats: their grants sent over 3.1.1
    try:
        # given
        load = SteadyLoad(stack.url, world.chats, rate=40).start()
        load.wait_accepted(40)

        # when: the relay dies, 20 messages are accepted without it, a new one starts
        stack.relay.kill()
        load.wait_accepted(20)
        stack.start_relay()
        load.wait_accepted(40)
        load.stop()
        world.settle(load)

        # then
        outcome = world.check(load)
        assert "(MQTT 3.1.1)" in stack.relay.log_path.read_text()
        assert outcome.missing == {}, f"{outcome}\n{stack.logs()}"
        assert outcome.unexpected == {}
        assert outcome.out_of_order == {}
        assert outcome.refused == {}
    finally:
        world.close()
