"""Push notifications: jobs queued with the change, a worker that sends them through FCM.

A service that wants phones woken queues a job in its own transaction
(`push.enqueue(kind=..., data=...)`), next to its outbox row: the job commits with the
change or not at all, and nothing about FCM is ever done in a request. The `push` worker
(`manage.py worker push`, chatserver/push_worker.py) wakes on the job table's NOTIFY,
turns each job into deliveries with the builder its app registered for that kind
(`register_builder`: which devices, what data; the builder knows the chats and the
people, this module knows neither), and sends them concurrently. Per delivery, FCM's
answer decides:

- sent: done;
- the token is dead (UNREGISTERED, INVALID_ARGUMENT, not ours): the handler the app
  registered (`register_dead_token_handler`) forgets it;
- retry (429, 5xx, timeouts, FCM unreachable): a job of its own for that one delivery, due
  after an exponential back-off or FCM's Retry-After, up to `PUSH_MAX_ATTEMPTS` sends;
- anything else, or too many attempts: given up, kept as a failed job for the operator.

So one slow or failing device never holds up the others, a job leaves the table only once
sent or given up, and FCM being slow or down never slows a POST or MQTT delivery.

Without `FCM_PROJECT_ID` and `FCM_SERVICE_ACCOUNT_FILE` push is off: `enqueue` queues
nothing and `/health/` says `"push": "off"`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q

from chatserver.fcm import FcmMessage
from chatserver.models import PushJob

NOTIFY_CHANNEL = "chat_push"
RETRY = "retry"  # the kind of a job that is one delivery to send again


@dataclass(frozen=True)
class Delivery:
    """One push to one device."""

    device_id: int
    message: FcmMessage

    def to_json(self) -> dict:
        m = self.message
        return {
            "device_id": self.device_id,
            "token": m.token,
            "data": m.data,
            "priority": m.priority,
            "collapse_key": m.collapse_key,
            "ttl_seconds": m.ttl_seconds,
        }

    @classmethod
    def from_json(cls, value: dict) -> Delivery:
        fields = dict(value)
        return cls(device_id=fields.pop("device_id"), message=FcmMessage(**fields))


Builder = Callable[[dict], Iterable[Delivery]]
_builders: dict[str, Builder] = {}
_dead_token_handlers: list[Callable[[int, str], None]] = []


def register_builder(*, kind: str, builder: Builder) -> None:
    """Make jobs of `kind` be built by `builder(data) -> deliveries` (apps, from ready())."""
    if kind == RETRY or (kind in _builders and _builders[kind] is not builder):
        raise ValueError(f"push kind {kind!r} is taken")
    _builders[kind] = builder


def register_dead_token_handler(handler: Callable[[int, str], None]) -> None:
    """`handler(device_id, token)` forgets a token FCM says is dead (the app owning devices)."""
    if handler not in _dead_token_handlers:
        _dead_token_handlers.append(handler)


def builder_of(kind: str) -> Builder:
    return _builders[kind]


def dead_token_handlers() -> list[Callable[[int, str], None]]:
    return list(_dead_token_handlers)


def enabled() -> bool:
    return bool(settings.FCM_PROJECT_ID and settings.FCM_SERVICE_ACCOUNT_FILE)


def enqueue(*, kind: str, data: dict) -> PushJob | None:
    """Queue a push job in the current transaction (nothing when push is off)."""
    assert connection.in_atomic_block, "push.enqueue() belongs inside the change's transaction"
    if queued_kind(kind) is None:
        return None
    return PushJob.objects.create(kind=kind, data=data)


def queued_kind(kind: str) -> str | None:
    """For a write statement that inserts its push job itself (the message send,
    `chats.send_sql.SEND`): `kind` if a job is to be queued, None when push is off.
    ValueError for a kind no builder was registered for, as `enqueue`."""
    if kind not in _builders:
        raise ValueError(f"no push builder for {kind!r}: register one with push.register_builder")
    return kind if enabled() else None


def status() -> dict:
    """For /health/: `push` (on/off), `push_pending`, `push_failed` (one query)."""
    counts = PushJob.objects.aggregate(
        pending=Count("id", filter=Q(failed=False)), failed=Count("id", filter=Q(failed=True))
    )
    return {"push": "on" if enabled() else "off", "push_pending": counts["pending"], "push_failed": counts["failed"]}
