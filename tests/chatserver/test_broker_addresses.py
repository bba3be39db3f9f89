"""The server's own broker connections reach a cluster through a list of addresses
(MQTT_HOST, chatserver/broker_addresses.py): parsed strictly, and tried in turn by
`BrokerConnection` against the session's real broker, whichever it is."""

from __future__ import annotations

import secrets

import pytest

from chatserver.broker_addresses import parse_broker_addresses
from chatserver.mqtt import BrokerConnection
from tests.support.mosquitto import connack
from tests.support.stack import free_port, wait_until

# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "addresses"), [
    ("127.0.0.1", [("127.0.0.1", 1883)]),
    ("mq1, mq2:1884 ,mq3", [("mq1", 1883), ("mq2", 1884), ("mq3", 1883)]),
    ("[::1]:1885,[fe80::1]", [("::1", 1885), ("fe80::1", 1883)]),
    ("broker.example.org:8883", [("broker.example.org", 8883)]),
])
def test_addresses_are_hosts_with_their_port_or_the_default_one(value, addresses):
    assert parse_broker_addresses(value, default_port=1883) == addresses


@pytest.mark.parametrize(("value", "message"), [
    ("", "empty broker address"),
    ("mq1,,mq2", "empty broker address"),
    ("mq1,", "empty broker address"),
    (":1883", "no host"),
    ("mq1:", "the port must be a number"),
    ("mq1:http", "the port must be a number"),
    ("mq1:0", "the port must be a number"),
    ("mq1:65536", "the port must be a number"),
    ("mq1:-1", "the port must be a number"),
    ("::1", "an IPv6 address goes in brackets"),
    ("[::1", "[IPv6 address] or [IPv6 address]:port"),
    ("[::1]1883", "[IPv6 address] or [IPv6 address]:port"),
    ("[]:1883", "[IPv6 address] or [IPv6 address]:port"),
    ("mq 1", "spaces in the host"),
    ("mq1,mq1:1883", "listed twice"),
])
def test_a_bad_address_list_is_refused_naming_the_problem(value, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_broker_addresses(value, default_port=1883)


# --- tried in turn, on the real broker -------------------------------------------------------


def connection(broker, addresses) -> BrokerConnection:
    return BrokerConnection(
        addresses=addresses, username=broker.admin_username, password=broker.admin_password,
        client_id=f"test-addresses-{secrets.token_hex(4)}", keepalive=10, protocol="3.1.1",
    )


def test_a_node_that_does_not_answer_is_passed_over_for_the_next(broker):
    # given: the first address has nothing listening
    dead = ("127.0.0.1", free_port())
    conn = connection(broker, [dead, (broker.host, broker.port)])

    # when
    try:
        connected = conn.connect(timeout=10)

        # then: connected to the second, and it works
        assert connected
        assert (conn.host, conn.port) == (broker.host, broker.port)
        pending = conn.publish(f"chat/users/{900_000_000 + secrets.randbelow(1000)}", b"{}", qos=1)
        assert conn.wait([pending], timeout=5)
    finally:
        conn.close()


def test_after_a_lost_connection_the_next_address_is_tried(broker):
    # given: two addresses of the same broker, connected to the first
    first, second = (broker.host, broker.port), ("localhost", broker.port)
    conn = connection(broker, [first, second])
    try:
        assert conn.connect(timeout=10)
        assert (conn.host, conn.port) == first

        first_id = conn._client._client_id.decode()

        # when: the broker drops the connection (another login with its client id)
        connack(broker.host, broker.port, broker.admin_username, broker.admin_password, client_id=first_id)

        # then: it comes back on the second address, with a client id of its own (no
        # session queue of the first connection's in the way)
        wait_until(lambda: conn.connected and conn.host == "localhost", 10, "a reconnection to the second address")
        assert first_id.startswith(conn.client_id) and conn._client._client_id.decode() not in {first_id, conn.client_id}
        pending = conn.publish(f"chat/users/{900_000_000 + secrets.randbelow(1000)}", b"{}", qos=1)
        assert conn.wait([pending], timeout=5)
    finally:
        conn.close()
