"""Ephemeral events from web processes (typing indicators): QoS 0, never stored.

Web processes never talk to the broker. An ephemeral event goes from the request to
the relay by PostgreSQL's NOTIFY on `CHANNEL`: `pg_notify` carries the payload itself, so
nothing is written to any table (no outbox row, no WAL for it), and the relay, which
holds the server's one MQTT connection, publishes it at QoS 0, unretained: never queued
for offline sessions. The web tier keeps no broker credentials and no broker connection,
and no process is added. What is lost with it: an event sent while no relay is active
(or on SQLite, which has no NOTIFY) is dropped, which is what an ephemeral event may be.

`Gate` is the relay's side: at most one publish per `key` (a member in a chat) per
`every` seconds, across every web process and host since there is one active relay per
partition, and every relay LISTENs but publishes only the events its partition `owns`
(a chat's typing goes out through the relay of the chat's outbox rows, RELAY_PARTITIONS). A
repeat of the same state within the second is dropped; a change within it (typing, then
stopped) is held and published when the second is up, so the last state always arrives.
Notifications older than `max_age` (a relay that just took over reads what queued while
it stood by) are dropped.

Infrastructure: imports no app.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from django.db import connection

from chatserver.events import Event, check_against_contract

CHANNEL = "chat_ephemeral"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_NOTIFY_BYTES = 7900


def publish(*, event: Event, topic: str, key: str, state: str) -> bool:
    """Hand `event` to the relay for a QoS 0 publish on `topic` (one statement, no write);
    `key` and `state` are what the relay's `Gate` limits by. False where there is no
    NOTIFY (SQLite): nothing is sent."""
    if not event.type.is_ephemeral:
        raise ValueError(f"{event.type} is not ephemeral: queue it through the outbox")
    check_against_contract(event)
    if connection.vendor != "postgresql":
        return False
    payload = json.dumps(
        {"topic": topic, "key": key, "state": state, "sent": time.time(), "event": event.encode()},
        ensure_ascii=False, separators=(",", ":"),
    )
    if len(payload.encode()) > MAX_NOTIFY_BYTES:
        raise ValueError(f"{event.type}: {len(payload)} bytes is too large for NOTIFY")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])
    return True


@dataclass
class _Key:
    sent_at: float  # monotonic time of the last publish
    state: str
    held: tuple[str, bytes, str] | None = None  # (topic, payload, state) due at sent_at + every


class Gate:
    """The relay's limit on ephemeral publishes (see the module docstring). Not thread
    safe: the relay's one thread calls it."""

    def __init__(self, *, every: float = 1.0, max_age: float = 2.0,
                 owns: Callable[[str], bool] | None = None) -> None:
        """`owns(topic)`: whether this relay publishes to `topic` (None: all); what it
        does not own is dropped before the gate keeps any state of it."""
        self.every, self.max_age, self.owns = every, max_age, owns
        self.keys: dict[str, _Key] = {}

    def receive(self, notification: str, *, now: float | None = None) -> list[tuple[str, bytes]]:
        """What to publish now for one notification's payload: [] or [(topic, payload)].
        Raises ValueError for a payload that is not one `publish` made."""
        now = time.monotonic() if now is None else now
        try:
            item = json.loads(notification)
            topic, key, state, sent, event = item["topic"], item["key"], item["state"], item["sent"], item["event"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not an ephemeral notification: {notification[:200]!r}") from exc
        if self.owns is not None and not self.owns(str(topic)):
            return []  # another partition's relay publishes it
        if time.time() - float(sent) > self.max_age:
            return []  # stale: queued while this relay stood by
        payload = event.encode()
        known = self.keys.get(key)
        if known is None or now - known.sent_at >= self.every:
            self.keys[key] = _Key(sent_at=now, state=state)
            return [(topic, payload)]
        if state == known.state:
            known.held = None  # back to what was last published: nothing to catch up on
        else:
            known.held = (topic, payload, state)
        return []

    def due(self, *, now: float | None = None) -> list[tuple[str, bytes]]:
        """The held publishes whose second is up (and forget keys idle for a while)."""
        now = time.monotonic() if now is None else now
        out = []
        for key, known in list(self.keys.items()):
            if known.held is not None and now - known.sent_at >= self.every:
                topic, payload, state = known.held
                self.keys[key] = _Key(sent_at=now, state=state)
                out.append((topic, payload))
            elif known.held is None and now - known.sent_at >= 10 * self.every:
                del self.keys[key]
        return out

    def next_due_in(self, *, now: float | None = None) -> float | None:
        """Seconds until the next held publish is due (None: nothing held)."""
        now = time.monotonic() if now is None else now
        waits = [known.sent_at + self.every - now for known in self.keys.values() if known.held is not None]
        return max(0.0, min(waits)) if waits else None
