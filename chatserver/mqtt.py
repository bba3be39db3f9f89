"""The server's MQTT connection: the only server module that imports paho.

One `BrokerConnection` is one long-lived connection (the relay's, as the broker's admin
account), run by paho's network thread. The calling thread publishes events and sends
broker commands; each call returns a `Pending`, and `wait()` says whether all of them were
acknowledged by the broker.

The rule that makes the relay safe: a pending completes only if the broker answered it on
the same connection it was sent on. When the connection drops, every outstanding pending
fails and paho's copies are dropped (not resent on reconnect): the relay sends those outbox
rows again itself, so delivery is at-least-once and nothing is reported done that the
broker may not have.

MQTT 5 by default (`protocol="5"`): its PUBACK carries a reason code, so a publish the
broker refused (e.g. "Not authorized") shows as `Pending.error`. MQTT 3.1.1
(`protocol="3.1.1"`, MQTT_PROTOCOL; RabbitMQ 3.10 speaks nothing else) has no reason in a
PUBACK: a refusal is a silent success on Mosquitto and a closed connection on RabbitMQ
(every pending in flight fails; the relay finds the row that does it, chatserver/relay.py).
Clean start (3.1.1: clean session) on every connection: the relay keeps no broker
session, it replays unacknowledged outbox rows. Several broker addresses (a cluster's
nodes, chatserver/broker_addresses.py) are tried in turn: the same one while it keeps
connecting, the next after a lost connection or a failed attempt; since the relay keeps
no session, any node will do. With several addresses every connection has a client id of
its own (`<client_id>-<n>`): RabbitMQ 3.10 keeps even a clean session's subscription
queue (`mqtt-subscription-<client id>qos1`) on the node it was made on, and after that
node was killed (SIGKILL, measured: tests/chatserver/test_cluster_session.py) the other
nodes closed every connection with the same client id, declaring that queue ("home node
... is down"), for as long as the node stayed down.

Payloads above `max_payload` are refused here (the pending completes with an error):
above the broker's `max_packet_size` Mosquitto would disconnect us, and the relay would
resend the same row forever.
"""

from __future__ import annotations

import itertools
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from chatserver.broker_access import DynsecAccess

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes, bool], None]
PROTOCOLS = {"5": paho.MQTTv5, "3.1.1": paho.MQTTv311}


class Pending:
    """One publish or one batch of broker commands, until the broker answers it.

    `done` once answered on the connection it was sent on; `failed` if that connection
    dropped first (or it could not be sent). For a publish, `error` is None or the broker's
    refusal (an MQTT 5 reason); for commands, `result` lists `(command, error_or_None)` and
    `responses` the broker's raw answers (with their `data`), both in command order.

    Small on purpose: the relay holds one per copy of every row of a batch it has sent
    and not deleted (a 100-member group's batch of 500 rows: 50,500 of them). With a
    `threading.Event` each, 50,500 took 74 MB (tracemalloc), and the relay's RSS went
    from 76 to 101 MiB once a group's backlog built up (bench/results/20261201T174714Z);
    so they have slots and share their connection's condition, which `BrokerConnection.wait`
    waits on.
    """

    __slots__ = ("generation", "commands", "result", "responses", "error", "failed", "_answers", "_finished",
                 "_condition")

    def __init__(self, generation: int, *, commands: list[dict[str, Any]] | None = None,
                 condition: threading.Condition | None = None):
        self.generation = generation
        self.commands = commands
        self.result: Any = None
        # Commands only (a publish has no answers to keep; an empty tuple costs nothing).
        self.responses: list[dict[str, Any]] | tuple = () if commands is None else []
        self.error: str | None = None
        self.failed = False
        self._answers: dict[str, dict[str, Any] | None] | None = None if commands is None else {}
        self._finished = False
        # Notified when this completes (the connection's: one for all its pendings).
        self._condition = condition or threading.Condition(threading.Lock())

    @property
    def done(self) -> bool:
        return self._finished and not self.failed

    @property
    def finished(self) -> bool:
        """Done or failed: nothing more will happen to it."""
        return self._finished

    def _complete(self, result: Any = None, error: str | None = None) -> None:
        with self._condition:
            if not self._finished:
                self.result, self.error = result, error
                self._finished = True
                self._condition.notify_all()

    def _fail(self, reason: str) -> None:
        with self._condition:
            if not self._finished:
                self.failed, self.error = True, reason
                self._finished = True
                self._condition.notify_all()

    def __repr__(self) -> str:
        state = "done" if self.done else "failed" if self.failed else "pending"
        return f"<Pending gen={self.generation} {state} error={self.error!r}>"


class BrokerConnection:
    """A self-reconnecting MQTT 5 (or 3.1.1) connection for the server's own use.

    Thread-safety: `publish`, `control`, `subscribe`, `wait` and `close` may be called
    from any thread; paho's callbacks run in its network thread. Message handlers given to
    `subscribe` run in that network thread too: keep them short (hand work to a queue).
    """

    CONTROL_TOPIC = DynsecAccess.CONTROL_TOPIC
    RESPONSE_TOPIC = DynsecAccess.RESPONSE_TOPIC
    # paho's own limit is 20 unacknowledged QoS 1 messages; the relay pipelines batches.
    # Not more: paho scans its whole window on every acknowledgement, and 1,000 halved
    # the publish rate (measured with 30k QoS 1 publishes to this broker: 10.2k/s at
    # 1,000, 21.8k/s at 100). It also matches the broker's max_inflight_messages.
    MAX_INFLIGHT = 100
    RECONNECT_MIN_DELAY = 0.5
    # The server's own connections are a handful: trying again every 2 s costs a broker
    # nothing, and delivery resumes within 2 s of its return. (At 8 s, a RabbitMQ node,
    # which takes 5-15 s to boot, was back for up to 8 s before the relay noticed.)
    RECONNECT_MAX_DELAY = 2.0

    def __init__(
        self,
        *,
        host: str | None = None,
        port: int | None = None,
        addresses: Sequence[tuple[str, int]] = (),
        username: str,
        password: str,
        client_id: str,
        keepalive: int = 30,
        max_payload: int = 256 * 1024,
        tls: bool = False,
        tls_ca: str | None = None,
        protocol: str = "5",
    ) -> None:
        """`host` and `port`, or `addresses`: [(host, port), ...], every node of a cluster,
        tried in turn. `tls`: connect over TLS, verifying the broker's certificate and name
        against `tls_ca` (a PEM file; None: the system's CAs). `protocol`: "5" or "3.1.1"."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"MQTT protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
        self.addresses = list(addresses) or ([(host, port)] if host and port else [])
        if not self.addresses:
            raise ValueError("BrokerConnection needs host and port, or addresses")
        # The address the next connection attempt goes to (see _on_pre_connect).
        self._address = 0
        self.client_id = client_id
        self._attempts = itertools.count(1)
        self.protocol = protocol
        self.keepalive = keepalive
        # Below `max_packet_size` in broker/mosquitto.conf (256 KiB + room for the topic).
        self.max_payload = max_payload
        self._lock = threading.Lock()
        # What every Pending of this connection notifies when it completes (never taken
        # before self._lock: a pending completes under self._lock, or with no lock held).
        self._answered = threading.Condition(threading.Lock())
        self._generation = 0  # +1 on every connect and disconnect
        self._connected = threading.Event()
        self._closed = False
        self._by_mid: dict[int, Pending] = {}
        self._early_acks: dict[int, str | None] = {}
        # Publishes whose "published" callback nobody waits for (QoS 0: no answer at all;
        # broker commands: answered on the response topic), until paho reports them.
        self._untracked_mids: set[int] = set()
        self._by_correlation: dict[str, Pending] = {}
        self._subscriptions: dict[str, tuple[int, MessageHandler]] = {}
        self._seq = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:12]
        self._started = False
        # time.monotonic() of the broker's last answer (a CONNACK, a PUBACK, a command
        # response): what tells a broker that works from a socket that is merely open.
        self._last_answer: float | None = None

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=PROTOCOLS[protocol],
            # 3.1.1's clean session (MQTT 5 takes clean_start at connect instead).
            **({} if protocol == "5" else {"clean_session": True}),
        )
        client.username_pw_set(username, password)
        if tls:
            client.tls_set(ca_certs=tls_ca or None)
        client.max_inflight_messages_set(self.MAX_INFLIGHT)
        client.reconnect_delay_set(self.RECONNECT_MIN_DELAY, self.RECONNECT_MAX_DELAY)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.enable_logger(log)
        self._client = client

    # --- lifecycle ---------------------------------------------------------------------

    def connect(self, timeout: float) -> bool:
        """Start connecting (and reconnecting, forever); True once the broker accepted us.

        Called again later, it waits for the current (re)connection.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("connection closed")
            start = not self._started
            self._started = True
        if start:
            # _on_pre_connect puts the current address in place of this one.
            self._client.connect_async(
                self.host, self.port, keepalive=self.keepalive,
                **({"clean_start": True} if self.protocol == "5" else {}),
            )
            self._client.loop_start()
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def host(self) -> str:
        """The host of the address in use (or tried next)."""
        return self.addresses[self._address][0]

    @property
    def port(self) -> int:
        return self.addresses[self._address][1]

    @property
    def last_answer(self) -> float | None:
        """`time.monotonic()` when the broker last answered anything on this connection
        (None before its first CONNACK). A frozen broker keeps the socket open and stops
        answering: this stops moving. (A QoS 0 publish gets no answer, and does not count.)"""
        return self._last_answer

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._reset("connection closed")
        self._client.disconnect()
        self._client.loop_stop()

    # --- sending -----------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> Pending:
        """Send one message (QoS 1: done on PUBACK; QoS 0 has no acknowledgement and is
        done once handed to paho).

        A payload above `max_payload` is not sent: its pending completes at once with an
        `error`, like a publish the broker refused (sending it again would not help).
        """
        with self._lock:
            generation = self._generation
        pending = Pending(generation, condition=self._answered)
        if len(payload) > self.max_payload:
            log.error("not publishing %d bytes to %s: above %d", len(payload), topic, self.max_payload)
            pending._complete(error=f"payload too large ({len(payload)} > {self.max_payload} bytes)")
            return pending
        if not self._connected.is_set():
            pending._fail("not connected")
            return pending
        # Never hold self._lock while calling paho: paho calls _on_publish holding its own
        # lock, so holding ours here would invert the order. An acknowledgement arriving
        # before the registration below is parked in _early_acks.
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        with self._lock:
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                pending._fail(f"not sent: {paho.error_string(info.rc)}")
            elif self._generation != generation:
                pending._fail("connection changed while sending")
            elif qos == 0:
                # Written out, never acknowledged: paho's "published" for it (before or
                # after this point) is no answer from the broker, and must not pile up.
                self._untrack(info.mid)
                pending._complete()
            elif info.mid in self._early_acks:
                self._last_answer = time.monotonic()  # a PUBACK that came before this point
                pending._complete(error=self._early_acks.pop(info.mid))
            else:
                self._by_mid[info.mid] = pending
        return pending

    def control(self, commands: list[dict[str, Any]]) -> Pending:
        """Send broker commands in one message; the pending completes when all are answered.

        `result` is then `[(command, error_or_None), ...]` in the order given (the command
        dicts are not modified; correlation data is added to copies).
        """
        with self._lock:
            generation = self._generation
        pending = Pending(generation, commands=list(commands), condition=self._answered)
        if not commands:
            pending._complete(result=[])
            return pending
        if not self._connected.is_set():
            pending._fail("not connected")
            return pending
        wire = []
        with self._lock:
            for command in commands:
                correlation = f"{self._prefix}-{next(self._seq)}"
                pending._answers[correlation] = None
                self._by_correlation[correlation] = pending
                wire.append({**command, "correlationData": correlation})
        payload = json.dumps({"commands": wire}).encode()
        info = self._client.publish(self.CONTROL_TOPIC, payload, qos=1)
        with self._lock:
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._untrack(info.mid)  # the answers come on RESPONSE_TOPIC
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._generation != generation:
                for correlation in pending._answers:
                    self._by_correlation.pop(correlation, None)
                pending._fail(
                    "connection changed while sending"
                    if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
                    else f"not sent: {paho.error_string(info.rc)}"
                )
        return pending

    def _untrack(self, mid: int) -> None:
        """Nobody waits for `mid`'s "published": drop it if it came already, else when it
        comes (called holding self._lock)."""
        if mid in self._early_acks:
            del self._early_acks[mid]
        else:
            self._untracked_mids.add(mid)

    def subscribe(self, topic: str, handler: MessageHandler, *, qos: int = 1) -> None:
        """Subscribe now (if connected) and again after every reconnect.

        `handler(topic, payload, retain)` runs in paho's network thread.
        """
        with self._lock:
            self._subscriptions[topic] = (qos, handler)
        if self._connected.is_set():
            self._client.subscribe(topic, qos=qos)

    def wait(self, pendings: Iterable[Pending], timeout: float) -> bool:
        """True only if every pending was answered on the connection it was sent on.

        False as soon as one failed (connection dropped since it was sent) or when the
        timeout ran out; answers that come after a timeout still complete their pendings.
        """
        deadline = time.monotonic() + timeout
        with self._answered:
            for pending in pendings:
                while not pending._finished:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._answered.wait(remaining)
                if pending.failed:
                    return False
        return True

    # --- paho callbacks (network thread) -----------------------------------------------

    def _on_pre_connect(self, client: paho.Client, userdata: Any) -> None:
        # paho (re)connects to its own host and port, which its public setters refuse to
        # change between a lost connection and the next attempt: this runs just before
        # the socket is made (paho 2.2 `reconnect`), so the attempt goes to our address.
        # (tests/chatserver/test_broker_addresses.py fails if a paho upgrade breaks it.)
        client._host, client._port = self.addresses[self._address]
        if len(self.addresses) > 1:
            client._client_id = f"{self.client_id}-{next(self._attempts)}".encode()

    def _next_address(self, why: str) -> None:
        if len(self.addresses) > 1:
            was = f"{self.host}:{self.port}"
            self._address = (self._address + 1) % len(self.addresses)
            log.info("%s at %s; next broker address: %s:%s", why, was, self.host, self.port)

    def _on_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        # No TCP connection (refused, unreachable, a name that does not resolve).
        self._next_address("no connection")

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle on: every QoS 1 round trip would wait ~40 ms for delayed ACKs.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):  # not a TCP socket (e.g. a proxy wrapper)
            pass

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        self._last_answer = time.monotonic()
        # Unacknowledged messages of the previous connection: their pendings have failed
        # and the relay resends the rows itself; paho must not resend them too.
        client.drop_out_messages()
        with self._lock:
            self._reset("reconnected")
            subscriptions = dict(self._subscriptions)
        client.subscribe(self.RESPONSE_TOPIC, qos=1)
        for topic, (qos, _) in subscriptions.items():
            client.subscribe(topic, qos=qos)
        # Set last: a publish from now on goes out after the SUBSCRIBEs above.
        self._connected.set()
        log.info("connected to the broker at %s:%s (MQTT %s)", self.host, self.port, self.protocol)

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any,
                       reason: ReasonCode, properties: Properties | None) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        with self._lock:
            self._reset(f"disconnected: {reason}")
        if was_connected and not self._closed:
            log.warning("lost the broker connection to %s:%s (%s); reconnecting", self.host, self.port, reason)
        if not self._closed:
            # A node that went (stopped, crashed, refused us, stopped answering): the next
            # attempt goes to another one at once, rather than after a refusal from it.
            self._next_address("disconnected")

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int,
                    reason: ReasonCode, properties: Properties | None) -> None:
        error = str(reason) if reason.is_failure else None
        with self._lock:
            if mid in self._untracked_mids:
                self._untracked_mids.discard(mid)
                return
            pending = self._by_mid.pop(mid, None)
            if pending is None:
                # Parked: the broker's PUBACK of a publish not registered yet, or paho's
                # report of a QoS 0 one (no answer: publish() tells them apart).
                self._early_acks[mid] = error
                return
        self._last_answer = time.monotonic()
        if pending is not None:
            pending._complete(error=error)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        if message.topic == self.RESPONSE_TOPIC:
            self._on_response(message.payload)
            return
        with self._lock:
            handlers = [
                handler
                for topic, (_, handler) in self._subscriptions.items()
                if paho.topic_matches_sub(topic, message.topic)
            ]
        for handler in handlers:
            try:
                handler(message.topic, message.payload, message.retain)
            except Exception:
                log.exception("message handler failed for %s", message.topic)

    def _on_response(self, payload: bytes) -> None:
        self._last_answer = time.monotonic()
        try:
            responses = json.loads(payload)["responses"]
        except (ValueError, KeyError, TypeError):
            log.error("unreadable broker command response: %r", payload[:200])
            return
        finished = []
        with self._lock:
            for response in responses:
                pending = self._by_correlation.pop(str(response.get("correlationData")), None)
                if pending is None:
                    continue  # answer to a command of a failed pending
                pending._answers[response["correlationData"]] = response
                if not any(c in self._by_correlation for c in pending._answers):
                    finished.append(pending)
        for pending in finished:
            pending.responses = list(pending._answers.values())
            errors = [response.get("error") for response in pending.responses]
            pending._complete(result=list(zip(pending.commands, errors, strict=True)))

    def _reset(self, reason: str) -> None:
        """Fail everything outstanding and start a new generation (caller holds the lock)."""
        self._generation += 1
        outstanding = list(self._by_mid.values())
        outstanding += {id(p): p for p in self._by_correlation.values()}.values()
        self._by_mid.clear()
        self._by_correlation.clear()
        self._early_acks.clear()
        self._untracked_mids.clear()
        for pending in outstanding:
            pending._fail(reason)
