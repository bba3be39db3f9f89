"""`MqttProbe`: a paho client for tests, playing a phone, an attacker or an observer.

Every wait is on an event with a timeout; the only sleep is in `expect_nothing`, whose
name says that it waits on purpose.

Every server event a probe receives (a JSON object with a `type`, on a user or chat
topic) is checked against its schema in docs/asyncapi.yaml as it arrives. A mismatch is
recorded in `CONTRACT_FAILURES` (tests/conftest.py fails the test with it) and makes the
probe's next `wait_for` fail. Other payloads (tests publish raw markers such as
b"marker" to user topics on purpose) are not events and are not checked; a test that
publishes a fake event itself opts out with `check_events=False`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

if TYPE_CHECKING:
    from tests.support.factories import TestUser


# What probes received that does not match the contract, this test (see the module doc).
CONTRACT_FAILURES: list[str] = []
EVENT_TOPIC_PREFIXES = ("chat/users/", "chat/chats/")


def check_received(topic: str, payload: bytes) -> tuple[str | None, str | None]:
    """(event type, why it breaks the contract) of a payload received on `topic`:
    (None, None) for payloads that are not server events, (type, None) for a valid one."""
    from chatserver.contract import check_payload, check_topic

    if not topic.startswith(EVENT_TOPIC_PREFIXES):
        return None, None
    try:
        event = json.loads(payload)
    except ValueError:
        return None, None  # not an event: a raw marker a test published
    if not isinstance(event, dict) or "type" not in event:
        return None, None
    try:
        check_payload(event)
        check_topic(topic, str(event["type"]))
    except ValueError as exc:
        return str(event["type"]), f"on {topic}: {exc}"
    return event["type"], None


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class MqttProbe:
    """One MQTT client (3.1.1 by default) that records everything it receives.

    `connect()` may be called again (after a kick, or with other credentials); the
    messages received so far are kept. With `auto_reconnect`, paho reconnects by itself
    after a drop, like a phone's client; `connections` counts accepted connections.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        transport: str = "tcp",
        protocol: int = paho.MQTTv311,
        keepalive: int = 60,
        auto_reconnect: bool = False,
        check_events: bool = True,
    ) -> None:
        self.host, self.port = host, port
        self.transport, self.protocol = transport, protocol
        self.keepalive, self.auto_reconnect = keepalive, auto_reconnect
        self._cond = threading.Condition()
        self._messages: list[Received] = []
        self._subacks: dict[int, list[int]] = {}
        self._connack: int | None = None
        self.session_present: bool | None = None
        self.connections = 0
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._client: paho.Client | None = None
        # Events received that do not match docs/asyncapi.yaml, and how many were checked
        # (per type). `check_events = False` for a test that publishes fake events itself.
        self.check_events = check_events
        self.contract_failures: list[str] = []
        self.events_checked: dict[str, int] = {}

    # --- connection ------------------------------------------------------------------------

    def connect(
        self,
        username: str | None,
        password: str | None,
        client_id: str,
        clean_session: bool = False,
        will: dict[str, Any] | None = None,
        timeout: float = 5,
    ) -> int:
        """Connect; return the CONNACK code (0 = accepted). TimeoutError if none came.

        `will`: `{"topic", "payload", "qos"=1, "retain"=True}`.
        """
        self.close()
        kwargs: dict[str, Any] = {}
        if self.protocol == paho.MQTTv5:
            clean_start = clean_session
        else:
            kwargs["clean_session"] = clean_session
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=self.protocol,
            transport=self.transport,
            reconnect_on_failure=self.auto_reconnect,
            **kwargs,
        )
        if username is not None:
            client.username_pw_set(username, password)
        if will is not None:
            client.will_set(
                will["topic"], will["payload"], qos=will.get("qos", 1),
                retain=will.get("retain", True),
            )
        client.reconnect_delay_set(0.1, 1)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = _nodelay
        with self._cond:
            self._connack = None
        self.connected.clear()
        self.disconnected.clear()
        self._client = client
        connect_kwargs: dict[str, Any] = {"keepalive": self.keepalive}
        if self.protocol == paho.MQTTv5:
            connect_kwargs["clean_start"] = clean_start
        client.connect_async(self.host, self.port, **connect_kwargs)
        client.loop_start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._connack is not None, timeout):
                raise TimeoutError(f"no CONNACK within {timeout}s")
            return self._connack

    def wait_connected(self, timeout: float = 5) -> bool:
        return self.connected.wait(timeout)

    def wait_disconnected(self, timeout: float = 5) -> bool:
        return self.disconnected.wait(timeout)

    def wait_reconnected(self, after: int, timeout: float = 10) -> bool:
        """True once more than `after` connections were accepted (auto_reconnect)."""
        with self._cond:
            return self._cond.wait_for(lambda: self.connections > after, timeout)

    def disconnect(self) -> None:
        """A clean DISCONNECT: the Last Will is not sent."""
        client = self._client
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def drop(self) -> None:
        """Vanish without DISCONNECT (a killed app): the broker sends the Last Will."""
        client = self._client
        if client is None:
            return
        sock = client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.disconnected.wait(5)
        client.loop_stop()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    # --- subscribe / publish -----------------------------------------------------------------

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 5) -> int:
        """Subscribe; return the granted code (0/1 granted, 128 refused on 3.1.1)."""
        result, mid = self._client.subscribe(topic, qos=qos)
        if result != paho.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"subscribe not sent: {paho.error_string(result)}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, timeout):
                raise TimeoutError(f"no SUBACK for {topic} within {timeout}s")
            return self._subacks.pop(mid)[0]

    def refuses_subscribe(self, topic: str, qos: int = 1, timeout: float = 5) -> bool:
        """Whether the broker refuses a SUBSCRIBE: a SUBACK of 0x80 (Mosquitto), or the
        connection closed with no SUBACK (RabbitMQ 3.10; reconnect before the next one)."""
        result, mid = self._client.subscribe(topic, qos=qos)
        if result != paho.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"subscribe not sent: {paho.error_string(result)}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks or self.disconnected.is_set(), timeout):
                raise TimeoutError(f"neither a SUBACK for {topic} nor a disconnect within {timeout}s")
            if mid in self._subacks:
                return self._subacks.pop(mid)[0] == 0x80
            return True

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
        timeout: float = 5,
    ) -> bool:
        """Publish; True once the broker acknowledged it (QoS 1: that is no proof of
        delivery, Mosquitto acknowledges forbidden publishes too on 3.1.1)."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos == 0:
            return info.rc == paho.MQTT_ERR_SUCCESS
        info.wait_for_publish(timeout)
        return info.is_published()  # wait_for_publish returns silently on timeout

    # --- what came in ------------------------------------------------------------------------

    @property
    def messages(self) -> list[Received]:
        with self._cond:
            return list(self._messages)

    def messages_on(self, topic: str) -> list[bytes]:
        with self._cond:
            return [m.payload for m in self._messages if m.topic == topic]

    def wait_for(self, count: int, timeout: float = 5, topic: str | None = None) -> list[Received]:
        """Wait until `count` messages (on `topic`, if given) arrived; return them all."""
        def matching() -> list[Received]:
            return [m for m in self._messages if topic is None or m.topic == topic]

        with self._cond:
            found = self._cond.wait_for(lambda: len(matching()) >= count, timeout)
            if self.contract_failures:
                raise AssertionError(
                    "received events that do not match docs/asyncapi.yaml:\n" + "\n".join(self.contract_failures)
                )
            if not found:
                raise AssertionError(
                    f"expected {count} message(s){f' on {topic}' if topic else ''} within "
                    f"{timeout}s, got {matching()}"
                )
            return matching()

    def expect_nothing(self, seconds: float, topic: str | None = None) -> None:
        """Wait `seconds` on purpose and assert nothing (on `topic`) arrived meanwhile."""
        with self._cond:
            before = len(self._messages)
        time.sleep(seconds)
        with self._cond:
            new = [m for m in self._messages[before:] if topic is None or m.topic == topic]
        assert new == [], f"expected nothing, got {new}"

    def clear(self) -> None:
        with self._cond:
            self._messages.clear()

    # --- paho callbacks ----------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        with self._cond:
            self._connack = reason.value if hasattr(reason, "value") else int(reason)
            if self._connack == 0:
                self.session_present = bool(flags.session_present)
                self.connections += 1
                self.disconnected.clear()
                self.connected.set()
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        with self._cond:
            self.connected.clear()
            self.disconnected.set()
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self._subacks[mid] = [rc.value for rc in reason_codes]
            self._cond.notify_all()

    def _on_message(self, client, userdata, message) -> None:
        event_type, violation = (
            check_received(message.topic, message.payload) if self.check_events else (None, None)
        )
        with self._cond:
            if violation is not None:
                self.contract_failures.append(violation)
                CONTRACT_FAILURES.append(violation)
            elif event_type is not None:
                self.events_checked[event_type] = self.events_checked.get(event_type, 0) + 1
            self._messages.append(
                Received(message.topic, message.payload, message.qos, bool(message.retain))
            )
            self._cond.notify_all()


def _nodelay(client, userdata, sock) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


@contextmanager
def phone(broker, user: TestUser, *topics: str, clean_session: bool = False):
    """A device of `user` connected like the app (persistent session, auto-reconnect;
    QoS 1 subscriptions, typing topics at QoS 0 as docs/mqtt.md says)."""
    probe = MqttProbe(broker.host, broker.port, auto_reconnect=True, keepalive=5)
    assert probe.connect(clean_session=clean_session, **user.mqtt) == 0
    for topic in topics:
        assert probe.subscribe(topic, qos=0 if topic.endswith("/typing") else 1) in (0, 1), topic
    try:
        yield probe
    finally:
        probe.close()
