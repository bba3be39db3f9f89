"""The transactional outbox: what services call to have something published or granted.

Services call `enqueue` inside their transaction; the relay (`manage.py relay`, see
`chatserver/relay.py`) does the rest after commit. Nothing here talks to the broker.
"""

import json
import time
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder

from chatserver.models import OutboxEvent, RelayStatus

NOTIFY_CHANNEL = "chat_outbox"
# The relay refreshes its heartbeat every second; older than this, it is not running.
RELAY_HEARTBEAT_MAX_AGE = timedelta(seconds=5)


def event_payload(
    *, type: str, data: dict, chat_id: int | None = None, version: int | None = None
) -> str:
    """The JSON published over MQTT: `{type, chat?, version?, data, ts}`.

    `version` is the chat's change counter after this change (see Chat.version): a client
    keeps the highest it has seen per chat and hands it to /sync/ to catch up. Uses DRF's
    encoder so that a message in an event is byte-for-byte the object the HTTP API
    returns (same datetime format).
    """
    event = {"type": type}
    if chat_id is not None:
        event["chat"] = chat_id
    if version is not None:
        event["version"] = version
    event["data"] = data
    event["ts"] = timezone.now()
    return json.dumps(event, cls=JSONEncoder, separators=(",", ":"), ensure_ascii=False)


def enqueue(
    *,
    payload: str = "",
    user_ids: Iterable[int] = (),
    chat_id: int | None = None,
    access: Iterable[dict] = (),
) -> OutboxEvent:
    """Queue one outbox row in the current transaction; the relay gets it after commit."""
    assert connection.in_atomic_block, "enqueue() belongs inside the change's transaction"
    # On PostgreSQL the insert also wakes the relay at commit (a trigger sends NOTIFY:
    # migration chatserver 0002); SQLite is polled by the relay.
    return OutboxEvent.objects.create(
        payload=payload, user_ids=list(user_ids), chat_id=chat_id, access=list(access)
    )


def relay_status() -> dict:
    """What the relay last reported: `{"relay": "running"|"down", "broker": "up"|"down"|"unknown"}`."""
    status = RelayStatus.objects.filter(id=1).first()
    if status is None or timezone.now() - status.heartbeat_at > RELAY_HEARTBEAT_MAX_AGE:
        return {"relay": "down", "broker": "unknown"}
    return {"relay": "running", "broker": "up" if status.broker_connected else "down"}


def wait_applied(events: Iterable[OutboxEvent], *, timeout: float | None = None) -> bool:
    """Wait until the relay has applied these rows; True if it did within `timeout`.

    Used where the answer hands out something the broker must already know (fresh MQTT
    credentials, a chat topic one may now subscribe to, a revoked device). It returns at
    once when the relay or the broker is down, so requests never pile up behind an outage;
    the rows stay queued and are applied once the broker is back.
    """
    ids = [event.id for event in events]
    if not ids:
        return True
    if connection.in_atomic_block:
        # Not committed yet, so invisible to the relay: waiting could only time out.
        return False
    if timeout is None:
        timeout = settings.BROKER_SYNC_TIMEOUT
    if relay_status()["broker"] != "up":
        return False
    deadline = time.monotonic() + timeout
    pause = 0.002
    while OutboxEvent.objects.filter(id__in=ids).exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    return True
