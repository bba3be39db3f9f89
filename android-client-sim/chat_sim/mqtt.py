"""The receiving side of the phone: a paho client with a persistent session, plus the
HTTP catch-up that makes "nothing is lost, only delayed" true for the user.

`Listener` guarantees:
- It connects like the app: MQTT 3.1.1, `clean_session=False`, the client id the server
  handed out, a retained Last Will `offline` on `chat/presence/<uid>/<client_id>`, and a
  retained `online` there on every connect, every keepalive, and whenever the server
  sends `presence.probe`. paho reconnects by itself after a drop (the broker drops a
  user's connections whenever its chat memberships change).
- On every (re)connect, in this order: subscribe to the user topic and wait for the
  SUBACK, then catch up with `POST /chats/sync/` naming the highest version it has of
  each chat (asking again while a chat `has_more`), then process what MQTT delivered
  meanwhile. The other order would lose what is published between the catch-up and the
  subscription. Chats the answer calls `removed` are forgotten; `new` ones have their
  history fetched (after the newest message shown if known, else the newest page).
- Each message is handed out once as a message, in per-chat seq order; each later
  version of it (an edit, a deletion) once as a `message.updated` event, whether it came
  from the catch-up or live. Copies are dropped by message id, keeping the highest
  `version`. A live message whose seq skips ahead reports a gap, and a catch-up runs
  before it is shown.
- Per chat, it keeps the version up to which it has every change (live events advance it
  only without holes; a catch-up sets it): that is what the next catch-up names.
- Like the app, it tells the server what it received: whenever it has nothing else to
  do, one `delivered` pointer update per chat that got new messages (so senders see
  their delivered marks); a server that refuses it is told once, then left alone.
- With `typing`, it also subscribes at QoS 0 to the typing topic of each chat it is in
  (`chat/chats/<id>/typing`; after every catch-up, since a broker may drop a QoS 0
  subscription with the connection, and as it joins chats) and hands out the other
  members' `typing.updated`, published there only.
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

from chat_sim import tls
from chat_sim.api import Api, ApiError

# CONNACK answers that mean "not these credentials": the device was signed out, or the
# broker refuses its account for a while after failed logins (docs/mqtt.md, "Failed
# logins"). The phone asks the API which: 401, signed out, stop; anything else, try again
# after REFUSED_RETRY. paho reports 3.1.1's codes 4 and 5 as MQTT 5's 134 and 135.
_REFUSED_CONNACK = {134, 135}
REFUSED_RETRY = 15.0

# Messages shown of a chat the phone meets for the first time (its newest page).
HISTORY_PAGE = 20


def is_presence_probe(payload: bytes) -> bool:
    """Whether an event is the server's `presence.probe` (answered by publishing the
    device's state again at once). Cheap for every other payload."""
    if b"presence.probe" not in payload:
        return False
    try:
        return json.loads(payload).get("type") == "presence.probe"
    except (ValueError, AttributeError):
        return False


@dataclass
class Item:
    """One thing the phone shows, in the order it shows them.

    kind: "message" (a message, first copy only), "event" (any other event; type
          "message.updated" is a later version of a message already shown, an edit or a
          deletion, once per version), "gap" (seqs missing before a live message),
          "status" (connection and catch-up news; "chat_removed": a chat the catch-up
          says the user is no longer in, forgotten), "error" (something failed; the
          listener carries on).
    source: "live" (MQTT) or "fetched" (HTTP catch-up) for messages and their updates.
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
    message seen sets it). `version` None: not known yet (the next catch-up does not name
    the chat, so the server lists it as new)."""

    last_id: int = 0
    last_seq: int | None = None
    # Every change of the chat up to this version has been handled.
    version: int | None = None
    # Versions seen live above `version`, waiting for the ones in between.
    ahead: set[int] = field(default_factory=set)
    # Message id -> highest version shown, for the messages seen by this listener.
    seen: dict[int, int] = field(default_factory=dict)


@dataclass
class Stats:
    live: int = 0
    fetched: int = 0
    duplicates: int = 0
    gaps: int = 0
    connects: int = 0
    updates: int = 0

    def copy(self) -> Stats:
        return Stats(**self.__dict__)


class Listener:
    """One device's MQTT connection with catch-up. See the module docstring.

    The `api` it is given is used from its worker thread only: give it one of its own.
    """

    def __init__(self, api: Api, *, user_id: int, mqtt: dict,
                 on_item: Callable[[Item], None], cursors: dict[int, int] | None = None,
                 versions: dict[int, int] | None = None, chats: Iterable[int] = (),
                 keepalive: int = 30, typing: bool = False) -> None:
        """`cursors`: newest message id already shown per chat, and `versions`: highest
        chat version handled per chat (a phone's saved state). A chat without either is
        shown from its newest page of history; `chats`: chats to follow from their newest
        message on instead, without history."""
        self.api = api
        self.user_id = user_id
        self.mqtt = mqtt
        self.on_item = on_item
        # The server's, when it says (the session's `mqtt.keepalive`): presence refreshes too.
        self.keepalive = int(mqtt.get("keepalive") or keepalive)
        self.presence_topic = f"chat/presence/{user_id}/{mqtt['client_id']}"
        self.typing = typing
        self.cursors: dict[int, ChatCursor] = {cid: ChatCursor(last_id=mid) for cid, mid in (cursors or {}).items()}
        for cid, version in (versions or {}).items():
            self.cursors.setdefault(cid, ChatCursor()).version = version
        self._start_chats = {cid for cid in chats if cid not in self.cursors}
        # Chats left or deleted: late copies of their events must not bring them back.
        self._gone: set[int] = set()
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
        # Set when the broker refuses these credentials for good (the API says the device
        # is signed out, 401).
        self.refused = threading.Event()
        self.refused_retry = REFUSED_RETRY
        self._reopen_at: float | None = None

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

    def shown_versions(self) -> dict[int, int]:
        """The chat version handled per chat (for the profile to save)."""
        return {cid: c.version for cid, c in self.cursors.items() if c.version is not None}

    # --- paho side (network thread): only hand over to the worker ----------------------

    def _open(self) -> None:
        self._epoch += 1
        epoch = self._epoch
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.mqtt["client_id"],
                             protocol=paho.MQTTv311, clean_session=False, userdata=epoch)
        client.username_pw_set(self.mqtt["username"], self.mqtt["password"])
        port, over_tls = tls.mqtt_endpoint(self.mqtt)
        if over_tls:
            client.tls_set_context(tls.context())
        client.will_set(self.presence_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(0.2, 5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = _nodelay
        self.caught_up.clear()
        self._client = client
        client.connect_async(self.mqtt["host"], port, keepalive=self.keepalive)
        client.loop_start()

    def _on_connect(self, client, epoch, flags, reason, properties) -> None:
        if epoch != self._epoch:
            return
        code = reason.value
        if code != 0:
            self._inbox.put(("refused", (code, str(reason))))
            if code in _REFUSED_CONNACK:
                client.disconnect()  # stops paho's reconnect loop; the worker decides
            return
        self.connected.set()
        client.publish(self.presence_topic, "online", qos=1, retain=True)
        self._inbox.put(("connected", bool(flags.session_present)))

    def _after_refusal(self) -> None:
        """The broker refused the credentials: signed out (stop for good), or a cooldown
        after failed logins (try again later)? The API knows."""
        try:
            self.api.me()
        except ApiError as exc:
            if exc.status == 401:
                self.refused.set()
                return
        self._emit(Item("status", "login_cooldown", data={"retry_in": self.refused_retry}))
        self._reopen_at = time.monotonic() + self.refused_retry

    def _on_disconnect(self, client, epoch, flags, reason, properties) -> None:
        if epoch == self._epoch:
            self.connected.clear()
            self._inbox.put(("disconnected", str(reason)))

    def _on_subscribe(self, client, epoch, mid, reason_codes, properties) -> None:
        with self._cond:
            self._subacks[mid] = reason_codes[0].value
            self._cond.notify_all()

    def _on_message(self, client, epoch, message) -> None:
        if epoch != self._epoch:
            return
        if is_presence_probe(message.payload):
            # The server's presence worker restarted (or the broker did): say we are here
            # now, from this thread, even while the worker is busy catching up.
            client.publish(self.presence_topic, "online", qos=1, retain=True)
            return
        if message.topic.startswith("chat/chats/"):
            # Typing topics (the rest comes on the user topic; a chat topic subscribed by
            # an older version of this session brings copies of it: dropped).
            if message.topic.endswith("/typing"):
                self._inbox.put(("typing", message.payload))
            return
        self._inbox.put(("mqtt", message.payload))

    # --- worker thread ------------------------------------------------------------------

    def _work(self) -> None:
        refresh_at = time.monotonic() + self.keepalive
        while True:
            if time.monotonic() >= refresh_at:
                # The server counts a device present only while it refreshes its presence
                # (every keepalive), busy or not; a phone gone without its Will is offline
                # soon after.
                client = self._client
                if client is not None and self.connected.is_set():
                    client.publish(self.presence_topic, "online", qos=1, retain=True)
                refresh_at = time.monotonic() + self.keepalive
            if self._reopen_at is not None and time.monotonic() >= self._reopen_at:
                self._reopen_at = None
                self._open()
            wake_at = min(refresh_at, self._reopen_at or refresh_at)
            try:
                what, value = self._inbox.get(timeout=max(0.0, wake_at - time.monotonic()))
            except queue.Empty:
                continue
            try:
                if what == "stop":
                    return
                if what == "connected":
                    self._after_connect(session_present=value)
                elif what == "mqtt":
                    self._on_payload(value)
                elif what == "typing":
                    self._on_typing(value)
                elif what == "disconnected":
                    self._emit(Item("status", "disconnected", data={"reason": value}))
                elif what == "refused":
                    code, reason = value
                    self._emit(Item("error", "connect_refused", data={"code": code, "reason": reason}))
                    if code in _REFUSED_CONNACK:
                        self._after_refusal()
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
        before = self.stats.copy()
        self._catch_up()
        for chat_id in list(self.cursors):
            self._follow_typing(chat_id)
        self._emit(Item("status", "caught_up", data={"fetched": self.stats.fetched - before.fetched,
                                                     "updated": self.stats.updates - before.updates}))
        self.caught_up.set()

    def _follow_typing(self, chat_id: int | None) -> None:
        """Subscribe to a chat's typing topic, at QoS 0: never queued by the broker."""
        client = self._client
        if self.typing and client is not None and isinstance(chat_id, int):
            client.subscribe(f"chat/chats/{chat_id}/typing", qos=0)

    def _on_typing(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
            chat_id, data = event["chat"], event["data"]
        except (ValueError, KeyError, TypeError):
            self._emit(Item("error", "bad_payload", data={"payload": payload[:200].decode(errors="replace")}))
            return
        if event.get("type") != "typing.updated" or data.get("user") == self.user_id:
            return  # one's own typing comes back too: not shown
        self._emit(Item("event", "typing.updated", chat=chat_id, data=data, at=time.time()))

    def _catch_up(self) -> None:
        """One `POST /chats/sync/` naming every chat whose version is known (plus one more
        while a chat `has_more`): shows what changed, forgets the chats left, and fetches
        the history of the chats not named."""
        first = True
        while True:
            known = {cid: c.version for cid, c in self.cursors.items() if c.version is not None}
            answer = self.api.sync(known)
            for chat_id in answer["removed"]:
                self._forget(chat_id)
                self._emit(Item("status", "chat_removed", chat=chat_id))
            listed = {chat["id"] for chat in answer["new"]}
            self._gone -= listed
            if first:
                # Named nowhere and not new: chats the user is not in (any more).
                for chat_id in [cid for cid, c in self.cursors.items() if c.version is None and cid not in listed]:
                    self._forget(chat_id)
                first = False
            for chat in answer["new"]:
                self._adopt(chat)
            more = False
            for change in answer["changed"]:
                cursor = self.cursors.setdefault(change["id"], ChatCursor())
                for message in change["messages"]:
                    self._take(message, source="fetched")
                self._settle(cursor, change["version"])
                more = more or change["has_more"]
            if not more:
                return

    def _adopt(self, chat: dict) -> None:
        """A chat the catch-up did not name: show what came after the newest message shown
        (a phone that knew the chat but not its version), its newest page of history, or
        (for `chats` given at start) nothing, then follow it from the version listed."""
        chat_id = chat["id"]
        cursor = self.cursors.setdefault(chat_id, ChatCursor())
        try:
            if cursor.last_id:
                missed = self.api.messages_after(chat_id, cursor.last_id)
            elif chat_id in self._start_chats:  # follow from its newest message, without history
                newest = self.api.messages(chat_id, limit=1)["results"]
                if newest:
                    cursor.last_id, cursor.last_seq = newest[-1]["id"], newest[-1]["seq"]
                missed = []
            else:
                missed = self.api.messages(chat_id, limit=HISTORY_PAGE)["results"]
        except ApiError as exc:
            if exc.status in (403, 404):  # left or deleted meanwhile
                self._forget(chat_id)
                return
            raise
        self._start_chats.discard(chat_id)
        for message in missed:
            self._take(message, source="fetched")
        if cursor.last_seq is None:
            cursor.last_seq = chat.get("last_seq")
        self._settle(cursor, chat["version"])

    def _forget(self, chat_id: int) -> None:
        self.cursors.pop(chat_id, None)
        self._gone.add(chat_id)

    def _settle(self, cursor: ChatCursor, version: int) -> None:
        """Every change up to `version` has been handled (a catch-up's answer)."""
        cursor.version = max(cursor.version or 0, version)
        cursor.ahead = {v for v in cursor.ahead if v > cursor.version}
        self._absorb(cursor)

    def _saw_version(self, cursor: ChatCursor, version: int) -> None:
        """A live event of the chat at `version`: advance without skipping any."""
        if cursor.version is None or version <= cursor.version:
            return
        cursor.ahead.add(version)
        self._absorb(cursor)

    @staticmethod
    def _absorb(cursor: ChatCursor) -> None:
        while cursor.version is not None and cursor.version + 1 in cursor.ahead:
            cursor.version += 1
            cursor.ahead.discard(cursor.version)

    def _on_payload(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
            kind = event["type"]
        except (ValueError, KeyError, TypeError):
            self._emit(Item("error", "bad_payload", data={"payload": payload[:200].decode(errors="replace")}))
            return
        chat_id = event.get("chat")
        version = event.get("version")
        data = event.get("data") or {}
        if kind in ("message.created", "message.updated"):
            if data.get("chat") in self._gone:
                self.stats.duplicates += 1  # a late copy from a chat left since
                return
            self._on_live_message(data)
        else:
            if kind == "chat.created" and chat_id not in self.cursors:
                # A new chat: everything from its first message on will come live.
                self.cursors[chat_id] = ChatCursor(last_id=0, last_seq=0, version=version)
                self._gone.discard(chat_id)
                self._follow_typing(chat_id)
            elif kind == "member.added" and (data.get("member") or {}).get("id") == self.user_id:
                # Joined: follow from here on (its history is not shown).
                self.cursors.setdefault(chat_id, ChatCursor(version=version))
                self._gone.discard(chat_id)
                self._follow_typing(chat_id)
            elif (kind == "chat.deleted" and not data.get("hidden")) or (
                kind == "member.removed" and (data.get("member") or {}).get("id") == self.user_id
            ):
                self._forget(chat_id)
            self._emit(Item("event", kind, chat=chat_id, data=data, at=time.time()))
        cursor = self.cursors.get(chat_id) if chat_id is not None else None
        if cursor is not None and isinstance(version, int):
            self._saw_version(cursor, version)

    def _on_live_message(self, message: dict) -> None:
        chat_id = message["chat"]
        cursor = self.cursors.setdefault(chat_id, ChatCursor())
        if (message["id"] > cursor.last_id and cursor.last_seq is not None
                and message["seq"] > cursor.last_seq + 1):
            self.stats.gaps += 1
            self._emit(Item("gap", "gap", chat=chat_id, data={
                "after_seq": cursor.last_seq, "next_seq": message["seq"],
                "missing": message["seq"] - cursor.last_seq - 1,
            }))
            self._catch_up()  # fills the gap, and shows this message too
            cursor = self.cursors.get(chat_id)
            if cursor is None:  # no longer in the chat
                return
        self._take(message, source="live")

    def _take(self, message: dict, *, source: str) -> None:
        """Show a message once, and each later version of it once; drop the rest."""
        cursor = self.cursors.setdefault(message["chat"], ChatCursor())
        message_id, version = message["id"], message.get("version") or 0
        if message_id > cursor.last_id:
            cursor.last_id = message_id
            cursor.last_seq = max(cursor.last_seq or 0, message["seq"])
            cursor.seen[message_id] = version
            if source == "live":
                self.stats.live += 1
            else:
                self.stats.fetched += 1
            self._emit(Item("message", "message.created", chat=message["chat"], data=message, source=source))
            return
        shown = cursor.seen.get(message_id)
        if shown is not None:
            stale = version <= shown
        else:
            # Shown before this listener started: its versions up to the chat's handled
            # version are on screen already, and an unchanged message is a mere copy.
            stale = ((cursor.version is not None and version <= cursor.version)
                     or not (message.get("edited_at") or message.get("deleted") or message.get("reactions")))
        if stale:
            self.stats.duplicates += 1
            return
        cursor.seen[message_id] = version
        self.stats.updates += 1
        self._emit(Item("event", "message.updated", chat=message["chat"], data=message, source=source))

    def _emit(self, item: Item) -> None:
        self.on_item(item)


def _nodelay(client, userdata, sock) -> None:
    # paho does not disable Nagle; without it a PUBACK may wait ~40 ms for a delayed ACK.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass
