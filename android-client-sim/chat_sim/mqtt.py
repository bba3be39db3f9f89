"""The receiving side of the phone: a paho client with a persistent session, plus the
HTTP catch-up that makes "nothing is lost, only delayed" true for the user.

`Listener` guarantees:
- It connects like the app: MQTT 3.1.1, `clean_session=False`, the client id the server
  handed out, a retained Last Will `offline` on `chat/presence/<uid>/<client_id>`, and a
  retained `online` there on every connect. paho reconnects by itself after a drop (the
  broker drops a user's connections whenever its chat memberships change).
- On every (re)connect, in this order: subscribe to the user topic and wait for the
  SUBACK, then fetch over HTTP every message after the newest one shown per chat, then
  process what MQTT delivered meanwhile, dropping copies already shown (by id). The
  other order would lose what is published between the fetch and the subscription.
- Each message is handed out once, in per-chat seq order. A live message whose seq skips
  ahead reports a gap, and the missing ones are fetched over HTTP before it is shown.
- Like the app, it tells the server what it received: whenever it has nothing else to
  do, one `delivered` pointer update per chat that got new messages (so senders see
  their delivered marks); a server that refuses it is told once, then left alone.
- `on_item` runs on one worker thread, never on paho's network thread, so it may block
  or call the HTTP API.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from chat_sim.api import Api, ApiError

# CONNACK answers after which retrying cannot help (the credentials are gone: logout).
# paho reports 3.1.1's codes 4 and 5 as the MQTT 5 reason codes 134 and 135.
_FATAL_CONNACK = {134, 135}


@dataclass
class Item:
    """One thing the phone shows, in the order it shows them.

    kind: "message" (a message.created, first copy only), "event" (any other event),
          "gap" (seqs missing before a live message), "status" (connection and catch-up
          news), "error" (something failed; the listener carries on).
    source: "live" (MQTT) or "fetched" (HTTP catch-up) for messages.
    """

    kind: str
    type: str
    chat: int | None = None
    data: dict = field(default_factory=dict)
    source: str = "live"
    at: float = field(default_factory=time.time)


@dataclass
class ChatCursor:
    """What the phone has shown of one chat. `last_seq` None: not known yet (the first
    message seen sets it)."""

    last_id: int = 0
    last_seq: int | None = None


@dataclass
class Stats:
    live: int = 0
    fetched: int = 0
    duplicates: int = 0
    gaps: int = 0
    connects: int = 0

    def copy(self) -> Stats:
        return Stats(**self.__dict__)


class Listener:
    """One device's MQTT connection with catch-up. See the module docstring.

    The `api` it is given is used from its worker thread only: give it one of its own.
    """

    def __init__(self, api: Api, *, user_id: int, mqtt: dict,
                 on_item: Callable[[Item], None], cursors: dict[int, int] | None = None,
                 chats: Iterable[int] = (), keepalive: int = 30) -> None:
        """`cursors`: newest message id already shown per chat (a phone's saved state).
        `chats`: chats to follow from their newest message on, if no cursor says more."""
        self.api = api
        self.user_id = user_id
        self.mqtt = mqtt
        self.on_item = on_item
        self.keepalive = keepalive
        self.presence_topic = f"chat/presence/{user_id}/{mqtt['client_id']}"
        self.cursors: dict[int, ChatCursor] = {cid: ChatCursor(last_id=mid) for cid, mid in (cursors or {}).items()}
        self._start_chats = [cid for cid in chats if cid not in self.cursors]
        self._delivered: dict[int, int] = {}  # chat id -> newest id reported delivered
        self._delivered_ok = True
        self.stats = Stats()
        self._inbox: queue.Queue = queue.Queue()
        self._client: paho.Client | None = None
        self._epoch = 0
        self._subacks: dict[int, int] = {}
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self.connected = threading.Event()
        self.caught_up = threading.Event()
        # Set when the broker refuses these credentials for good (the device logged out).
        self.refused = threading.Event()

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Connect (in the background; `wait_ready` waits for the first catch-up)."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="listener", daemon=True)
            self._worker.start()
        self._open()

    def wait_ready(self, timeout: float = 10) -> bool:
        """Wait for the current connection's catch-up, then for what MQTT delivered
        meanwhile (a persistent session's queued copies) to be handled too."""
        deadline = time.monotonic() + timeout
        if not self.caught_up.wait(timeout):
            return False
        while self._inbox.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return True

    def go_background(self) -> None:
        """Vanish like an app whose network the OS cut: no DISCONNECT, so the broker
        keeps the session, queues what comes, and publishes the Last Will `offline`."""
        client, self._client = self._client, None
        self._epoch += 1
        if client is None:
            return
        sock = client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # paho waits its reconnect delay (0.2 s at least) before trying again, and gives
        # up once loop_stop has asked its thread to end: the phone stays away.
        client.loop_stop()
        self.connected.clear()

    def come_back(self) -> None:
        """Reconnect with the same persistent session (catch-up follows)."""
        self._open()

    def stop(self) -> None:
        """Close like the app: `offline` published (a clean DISCONNECT sends no Will)."""
        client, self._client = self._client, None
        self._epoch += 1
        if client is not None and client.is_connected():
            info = client.publish(self.presence_topic, "offline", qos=1, retain=True)
            info.wait_for_publish(2)
            client.disconnect()
        if client is not None:
            client.loop_stop()
        self.connected.clear()
        self._inbox.put(("stop", None))
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(10)

    def shown_cursors(self) -> dict[int, int]:
        """The newest message id shown per chat (for the profile to save)."""
        return {cid: c.last_id for cid, c in self.cursors.items() if c.last_id}

    # --- paho side (network thread): only hand over to the worker ----------------------

    def _open(self) -> None:
        self._epoch += 1
        epoch = self._epoch
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.mqtt["client_id"],
                             protocol=paho.MQTTv311, clean_session=False, userdata=epoch)
        client.username_pw_set(self.mqtt["username"], self.mqtt["password"])
        client.will_set(self.presence_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(0.2, 5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = _nodelay
        self.caught_up.clear()
        self._client = client
        client.connect_async(self.mqtt["host"], self.mqtt["port"], keepalive=self.keepalive)
        client.loop_start()

    def _on_connect(self, client, epoch, flags, reason, properties) -> None:
        if epoch != self._epoch:
            return
        code = reason.value
        if code != 0:
            self._inbox.put(("refused", (code, str(reason))))
            if code in _FATAL_CONNACK:
                self.refused.set()
                client.disconnect()  # stops paho's reconnect loop
            return
        self.connected.set()
        client.publish(self.presence_topic, "online", qos=1, retain=True)
        self._inbox.put(("connected", bool(flags.session_present)))

    def _on_disconnect(self, client, epoch, flags, reason, properties) -> None:
        if epoch == self._epoch:
            self.connected.clear()
            self._inbox.put(("disconnected", str(reason)))

    def _on_subscribe(self, client, epoch, mid, reason_codes, properties) -> None:
        with self._cond:
            self._subacks[mid] = reason_codes[0].value
            self._cond.notify_all()

    def _on_message(self, client, epoch, message) -> None:
        if epoch == self._epoch:
            self._inbox.put(("mqtt", message.payload))

    # --- worker thread ------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            what, value = self._inbox.get()
            try:
                if what == "stop":
                    return
                if what == "connected":
                    self._after_connect(session_present=value)
                elif what == "mqtt":
                    self._on_payload(value)
                elif what == "disconnected":
                    self._emit(Item("status", "disconnected", data={"reason": value}))
                elif what == "refused":
                    code, reason = value
                    self._emit(Item("error", "connect_refused", data={"code": code, "reason": reason}))
                if self._inbox.empty():
                    self._report_delivered()
            except ApiError as exc:
                self._emit(Item("error", "http", data=exc.envelope()))
            finally:
                self._inbox.task_done()

    def _report_delivered(self) -> None:
        for chat_id, cursor in list(self.cursors.items()):
            if not self._delivered_ok:
                return
            if cursor.last_id <= self._delivered.get(chat_id, 0):
                continue
            self._delivered[chat_id] = cursor.last_id
            try:
                self.api.delivered(chat_id, self.user_id, cursor.last_id)
            except ApiError as exc:
                if exc.code == "chat_not_found":
                    continue  # left or deleted meanwhile
                self._delivered_ok = False
                self._emit(Item("error", "delivered_off", data=exc.envelope()))

    def _after_connect(self, *, session_present: bool) -> None:
        self.stats.connects += 1
        self._emit(Item("status", "connected", data={"session_present": session_present}))
        client = self._client
        if client is None:
            return
        topic = self.mqtt["user_topic"]
        result, mid = client.subscribe(topic, qos=1)
        if result != paho.MQTT_ERR_SUCCESS:
            return  # the connection is gone again; its next connect starts over
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, 10):
                self._emit(Item("error", "subscribe_timeout", data={"topic": topic}))
                return
            granted = self._subacks.pop(mid)
        if granted >= 0x80:
            self._emit(Item("error", "subscribe_refused", data={"topic": topic, "code": granted}))
            return
        before = self.stats.fetched
        self._catch_up(first=self.stats.connects == 1)
        self._emit(Item("status", "caught_up", data={"fetched": self.stats.fetched - before}))
        self.caught_up.set()

    def _catch_up(self, *, first: bool) -> None:
        """Fetch what was missed, for every chat the phone knows of (and, once the server
        lists a user's chats, for chats it did not know of yet)."""
        try:
            listed = self.api.user_chats(self.user_id)
        except ApiError as exc:
            if exc.status != 404:
                raise
            listed = None  # the server cannot list chats: follow the ones already known
        if first:
            start = set(self._start_chats)
            if listed is not None:
                start |= {c["id"] for c in listed if c["id"] not in self.cursors}
            for chat_id in start:
                self._baseline(chat_id, listed)
        if listed is not None:
            for chat in listed:
                if chat["id"] not in self.cursors:  # appeared while away: show it all
                    self.cursors[chat["id"]] = ChatCursor(last_id=0, last_seq=0)
            newest = {c["id"]: (c.get("last_message") or {}).get("id", 0) for c in listed}
            stale = [cid for cid, cur in self.cursors.items() if newest.get(cid, 0) > cur.last_id]
        else:
            stale = list(self.cursors)
        for chat_id in stale:
            self._fetch(chat_id)

    def _baseline(self, chat_id: int, listed: list[dict] | None) -> None:
        """Start a chat at its newest message, without showing the history."""
        last = None
        if listed is not None:
            last = next((c.get("last_message") for c in listed if c["id"] == chat_id), None)
        else:
            page = self.api.messages(chat_id, limit=1)["results"]
            last = page[-1] if page else None
        self.cursors[chat_id] = ChatCursor(last_id=last["id"], last_seq=last["seq"]) if last else ChatCursor(0, 0)

    def _fetch(self, chat_id: int) -> None:
        cursor = self.cursors[chat_id]
        try:
            missed = self.api.messages_after(chat_id, cursor.last_id)
        except ApiError as exc:
            if exc.status in (403, 404):  # no longer a member: stop following it
                self.cursors.pop(chat_id, None)
                return
            raise
        for message in missed:
            self._show(message, source="fetched")

    def _on_payload(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
            kind = event["type"]
        except (ValueError, KeyError, TypeError):
            self._emit(Item("error", "bad_payload", data={"payload": payload[:200].decode(errors="replace")}))
            return
        chat_id = event.get("chat")
        data = event.get("data") or {}
        if kind == "message.created":
            self._on_live_message(data)
            return
        if kind == "chat.created" and chat_id not in self.cursors:
            self.cursors[chat_id] = ChatCursor(last_id=0, last_seq=0)
        elif kind == "member.added" and (data.get("member") or {}).get("id") == self.user_id:
            self.cursors.setdefault(chat_id, ChatCursor())
        elif kind == "chat.deleted" or (
            kind == "member.removed" and (data.get("member") or {}).get("id") == self.user_id
        ):
            self.cursors.pop(chat_id, None)
        self._emit(Item("event", kind, chat=chat_id, data=data, at=time.time()))

    def _on_live_message(self, message: dict) -> None:
        chat_id = message["chat"]
        cursor = self.cursors.setdefault(chat_id, ChatCursor())
        if message["id"] <= cursor.last_id:
            self.stats.duplicates += 1
            return
        if cursor.last_seq is not None and message["seq"] > cursor.last_seq + 1:
            self.stats.gaps += 1
            self._emit(Item("gap", "gap", chat=chat_id, data={
                "after_seq": cursor.last_seq, "next_seq": message["seq"],
                "missing": message["seq"] - cursor.last_seq - 1,
            }))
            self._fetch(chat_id)  # fills the gap, and shows this message too
            if message["id"] <= cursor.last_id:
                return
        self._show(message, source="live")

    def _show(self, message: dict, *, source: str) -> None:
        cursor = self.cursors.setdefault(message["chat"], ChatCursor())
        if message["id"] <= cursor.last_id:
            self.stats.duplicates += 1
            return
        cursor.last_id = message["id"]
        cursor.last_seq = message["seq"]
        if source == "live":
            self.stats.live += 1
        else:
            self.stats.fetched += 1
        self._emit(Item("message", "message.created", chat=message["chat"], data=message, source=source))

    def _emit(self, item: Item) -> None:
        self.on_item(item)


def _nodelay(client, userdata, sock) -> None:
    # paho does not disable Nagle; without it a PUBACK may wait ~40 ms for a delayed ACK.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
