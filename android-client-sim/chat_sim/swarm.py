"""Many simulated phones in one process: each its own paho client and MQTT connection
(persistent session, Last Will, user topic), all driven by one selector loop, so a
thousand phones cost no thousand threads.

Run as a child process of `chat_sim.load` (`receiver_main`). For every phone and chat it
checks what arrives of this run's messages (recognised by the run tag at the start of
their content, which also carries the send time): duplicates (an id seen before),
out-of-order copies (a seq below one already received), and the POST -> receipt latency
(receipt time - the send time in the content; both clocks are this machine's).

Protocol with the parent, over a multiprocessing Connection:
    parent -> child  ("connect", None): a swarm started with `hold` connects its phones now
    parent -> child  ("report", {chat_id: [accepted message ids]})
    child -> parent  ("report", {...counts, latencies, lost...})
    parent -> child  ("stop", None): every phone publishes `offline` and disconnects
and shared counters (an Array of int64, see the C_* indexes) for progress.
"""

from __future__ import annotations

import array
import json
import selectors
import socket
import time
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

# Indexes into the shared counters.
C_READY, C_DELIVERED, C_DUPLICATES, C_OUT_OF_ORDER, C_RECONNECTS = range(5)
N_COUNTERS = 5

# Phones connecting at once: more would overflow the broker's accept backlog.
CONNECT_WINDOW = 64
KEEPALIVE = 60
RECONNECT_DELAY = 0.5


@dataclass
class PhoneSpec:
    user_id: int
    mqtt: dict
    chats: list[int]  # the chats it is a member of


@dataclass
class Phone:
    spec: PhoneSpec
    client: paho.Client | None = None
    connecting: bool = False  # counted in the connect window until ready or refused
    ready: bool = False
    refresh_at: float = 0.0  # when it publishes its presence again
    # chat id -> ids received / highest seq received (this run's messages only)
    seen: dict[int, set[int]] = field(default_factory=dict)
    top_seq: dict[int, int] = field(default_factory=dict)


class Swarm:
    def __init__(self, specs: list[PhoneSpec], *, tag: str, counters, hold: bool = False) -> None:
        self.phones = [Phone(spec) for spec in specs]
        self.tag = tag
        self.counters = counters
        self.selector = selectors.DefaultSelector()
        self.latencies = array.array("d")
        self.sent_at = array.array("d")  # the send time of each latency sample
        self._reconnect_at: dict[int, float] = {}  # phone index -> when
        # hold: connect only when the parent says so (a connect burst at a chosen moment)
        self._to_connect = [] if hold else list(range(len(self.phones)))
        self._connecting = 0

    # --- the loop -----------------------------------------------------------------------

    def run(self, conn) -> None:
        """Connect every phone and serve until the parent says stop."""
        self.selector.register(conn.fileno(), selectors.EVENT_READ, None)
        last_misc = time.monotonic()
        while True:
            self._connect_some()
            for key, mask in self.selector.select(timeout=0.25):
                client = key.data
                if client is None:
                    what, value = conn.recv()
                    if what == "stop":
                        self._stop_all()
                        return
                    if what == "report":
                        conn.send(("report", self.report(value)))
                    if what == "connect":
                        self._to_connect = [i for i, p in enumerate(self.phones) if p.client is None]
                    continue
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if mask & selectors.EVENT_WRITE and client.socket() is not None:
                    client.loop_write()
            now = time.monotonic()
            if now - last_misc >= 1.0:
                last_misc = now
                for phone in self.phones:
                    if phone.client is not None:
                        phone.client.loop_misc()  # keepalive pings
                        if phone.ready and now >= phone.refresh_at:
                            self._present(phone)
                for index, when in list(self._reconnect_at.items()):
                    if now >= when:
                        del self._reconnect_at[index]
                        self._reconnect(index)

    def _connect_some(self) -> None:
        while self._to_connect and self._connecting < CONNECT_WINDOW:
            index = self._to_connect.pop()
            phone = self.phones[index]
            phone.client = self._client(index)
            self._window(phone, True)
            try:
                phone.client.connect(phone.spec.mqtt["host"], phone.spec.mqtt["port"],
                                     keepalive=int(phone.spec.mqtt.get("keepalive") or KEEPALIVE))
            except OSError:
                self._reconnect_at[index] = time.monotonic() + RECONNECT_DELAY

    def _window(self, phone: Phone, connecting: bool) -> None:
        if phone.connecting != connecting:
            phone.connecting = connecting
            self._connecting += 1 if connecting else -1

    def _reconnect(self, index: int) -> None:
        self.counters[C_RECONNECTS] += 1
        try:
            self.phones[index].client.reconnect()
        except OSError:
            self._reconnect_at[index] = time.monotonic() + RECONNECT_DELAY

    def _client(self, index: int) -> paho.Client:
        spec = self.phones[index].spec
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=spec.mqtt["client_id"],
                             protocol=paho.MQTTv311, clean_session=False, userdata=index)
        client.username_pw_set(spec.mqtt["username"], spec.mqtt["password"])
        client.will_set(_presence_topic(spec), "offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    def _stop_all(self) -> None:
        for phone in self.phones:
            client = phone.client
            if client is not None and client.is_connected():
                client.publish(_presence_topic(phone.spec), "offline", qos=0, retain=True)
                client.disconnect()
                client.loop_write()

    # --- paho callbacks (all on this one thread) ----------------------------------------

    def _on_socket_open(self, client, index, sock) -> None:
        # paho does not disable Nagle; without it a PUBACK may wait ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.selector.register(sock, selectors.EVENT_READ, client)

    def _on_socket_close(self, client, index, sock) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    def _on_register_write(self, client, index, sock) -> None:
        self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, client)

    def _on_unregister_write(self, client, index, sock) -> None:
        try:
            self.selector.modify(sock, selectors.EVENT_READ, client)
        except (KeyError, ValueError):
            pass  # already closed

    def _on_connect(self, client, index, flags, reason, properties) -> None:
        phone = self.phones[index]
        if reason.value != 0:
            self._window(phone, False)  # never ready: the parent reports it
            return
        client.subscribe(phone.spec.mqtt["user_topic"], qos=1)
        self._present(phone)

    def _present(self, phone: Phone) -> None:
        """Publish `online`, as a phone does on connect, every keepalive and when probed:
        the server counts a phone that stops repeating it as gone."""
        phone.client.publish(_presence_topic(phone.spec), "online", qos=1, retain=True)
        phone.refresh_at = time.monotonic() + int(phone.spec.mqtt.get("keepalive") or KEEPALIVE)

    def _on_subscribe(self, client, index, mid, reason_codes, properties) -> None:
        phone = self.phones[index]
        if not phone.ready and reason_codes[0].value < 0x80:
            phone.ready = True
            self._window(phone, False)
            self.counters[C_READY] += 1

    def _on_disconnect(self, client, index, flags, reason, properties) -> None:
        if index not in self._reconnect_at:
            self._reconnect_at[index] = time.monotonic() + RECONNECT_DELAY

    def _on_message(self, client, index, message) -> None:
        received = time.time()
        event = json.loads(message.payload)
        if event.get("type") != "message.created":
            if event.get("type") == "presence.probe":
                self._present(self.phones[index])
            return
        data = event["data"]
        content = data["content"]
        if not content.startswith(self.tag):
            return  # another run's message, still queued in a persistent session
        phone = self.phones[index]
        chat = data["chat"]
        seen = phone.seen.get(chat)
        if seen is None:
            seen = phone.seen[chat] = set()
        if data["id"] in seen:
            self.counters[C_DUPLICATES] += 1
            return
        seen.add(data["id"])
        top = phone.top_seq.get(chat, 0)
        if data["seq"] < top:
            self.counters[C_OUT_OF_ORDER] += 1
        else:
            phone.top_seq[chat] = data["seq"]
        sent = float(content.split(" ", 2)[1])
        self.latencies.append(received - sent)
        self.sent_at.append(sent)
        self.counters[C_DELIVERED] += 1

    # --- the end ------------------------------------------------------------------------

    def report(self, accepted: dict[int, list[int]]) -> dict:
        """Per phone and chat, which accepted messages never arrived."""
        lost, lost_examples = 0, []
        for phone in self.phones:
            for chat in phone.spec.chats:
                missing = set(accepted.get(chat, ())) - phone.seen.get(chat, set())
                if missing:
                    lost += len(missing)
                    if len(lost_examples) < 10:
                        lost_examples.append({"user": phone.spec.user_id, "chat": chat,
                                              "missing": sorted(missing)[:10]})
        return {
            "phones": len(self.phones),
            "ready": sum(p.ready for p in self.phones),
            "delivered": self.counters[C_DELIVERED],
            "duplicates": self.counters[C_DUPLICATES],
            "out_of_order": self.counters[C_OUT_OF_ORDER],
            "reconnects": self.counters[C_RECONNECTS],
            "lost": lost,
            "lost_examples": lost_examples,
            "latencies": self.latencies.tobytes(),
            "sent_at": self.sent_at.tobytes(),
        }


def _presence_topic(spec: PhoneSpec) -> str:
    return f"chat/presence/{spec.user_id}/{spec.mqtt['client_id']}"


def receiver_main(conn, specs: list[PhoneSpec], tag: str, counters, hold: bool = False) -> None:
    """Entry point of a receiver process."""
    Swarm(specs, tag=tag, counters=counters, hold=hold).run(conn)
