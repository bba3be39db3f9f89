"""The transactional outbox: what services call to have something published or granted.

Services call `enqueue` inside their transaction; the relay (`manage.py worker relay`,
see `chatserver/relay.py`) does the rest after commit. Rows the relay cannot handle are
moved to the dead letters (`set_aside`), from where an operator replays or discards them
(`dead_letters_replay`, `dead_letters_discard`: `manage.py outbox_dead_letters`).
Nothing here talks to the broker.
"""

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Min
from django.utils import timezone

from chatserver.broker_access import AccessOp
from chatserver.events import Event, check_against_contract
from chatserver.models import DeadLetter, OutboxEvent, RelayStatus

logger = logging.getLogger("chatserver.outbox")

NOTIFY_CHANNEL = "chat_outbox"
# The relay refreshes its heartbeat every second; older than this, it is not running.
RELAY_HEARTBEAT_MAX_AGE = timedelta(seconds=5)
# The relay hears from a working broker at least every second (its probe's PUBACK, see
# chatserver/relay.py); no answer for longer than this and the broker is not answering,
# whether or not its socket is still open.
BROKER_ANSWER_MAX_AGE = timedelta(seconds=3)


class InvalidOutboxRow(ValueError):
    """A service tried to queue something the relay could not handle: a bug, raised in
    the request that made it."""


def partition_key(
    *, event: Event | None, user_ids: list[int], access: list[AccessOp], key: int | None = None
) -> int:
    """Which relay sends a row (the one of partition `key % RELAY_PARTITIONS`): rows with
    the same key are sent in id order, rows with different keys in any order.

    - The chat, for a chat event (to the chat's topic or to its members only) and for a
      row whose access operations name a chat (a MemberGrant, a MemberRevoke, a
      ChatRemove): a chat's grants and revocations stay in line with its events, so the
      new member's grant goes before the chat's first message to it, and a removed
      member's revocation before the first message it must not get.
    - Else the user the row is about: the user of its first access operation (a signup's
      UserAdd and DeviceAdds, a sign-out's DeviceRemoves), else the first of `user_ids`
      (services put the user the event is about first: `presence.updated` of user 5 to
      [5, *its friends], `user.updated` to [the user, *its audience]), so two states of
      one user reach everybody in order. A row about a user who is not among its
      recipients passes `key` (an account deletion's `user.updated` to its partners).
    - `key`, when given, wins.

    What is not ordered: a chat's events against a user's own events (a `chat_list.updated`
    against the chat's messages), as different topics never were for a phone that
    reconnects and fetches; and a MemberGrant against its user's UserAdd in another
    partition, which the relay retries while the group does not exist yet (chatserver/relay.py).
    """
    if key is not None:
        return key
    if event is not None and event.chat is not None:
        return event.chat
    for op in access:
        if getattr(op, "chat", None) is not None:
            return op.chat
    if access:
        return access[0].user
    return user_ids[0]


def enqueue(
    *,
    event: Event | None = None,
    user_ids: Iterable[int] = (),
    chat_topic: int | None = None,
    access: Iterable[AccessOp] = (),
    key: int | None = None,
) -> OutboxEvent:
    """Queue one outbox row in the current transaction; the relay gets it after commit.

    The relay applies `access` in order, then publishes `event` to the user topic of each
    of `user_ids` and, if set, to the topic of chat `chat_topic`. `key`: the partition
    key when `partition_key`'s rule would not find the user the row is about.
    """
    assert connection.in_atomic_block, "enqueue() belongs inside the change's transaction"
    access, user_ids = list(access), list(user_ids)
    row_key = _checked(event=event, user_ids=user_ids, chat_topic=chat_topic, access=access, key=key)
    # On PostgreSQL the insert also wakes the relay at commit (a trigger sends NOTIFY:
    # migration chatserver 0002); SQLite is polled by the relay.
    return OutboxEvent.objects.create(
        payload=event.encode() if event is not None else "",
        user_ids=user_ids,
        chat_id=chat_topic,
        access=[op.to_json() for op in access],
        partition_key=row_key,
        partition=row_key % settings.RELAY_PARTITIONS,
    )


def _checked(
    *, event: Event | None, user_ids: list[int] | None, chat_topic: int | None, access: list[AccessOp],
    key: int | None,
) -> int:
    """Refuse (InvalidOutboxRow) a row the relay could not handle; return its partition
    key. `user_ids` None: the write statement puts them in (`RowTemplate`)."""
    for op in access:
        if not isinstance(op, AccessOp):
            raise InvalidOutboxRow(f"not an access operation: {op!r}")
    for user_id in user_ids or ():
        if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
            raise InvalidOutboxRow(f"not a user id: {user_id!r}")
    if event is None:
        if user_ids or chat_topic is not None or not access:
            raise InvalidOutboxRow("a row without an event carries access operations only")
    else:
        if not isinstance(event, Event):
            raise InvalidOutboxRow(f"not an Event: {event!r}")
        if event.type.is_ephemeral:
            raise InvalidOutboxRow(f"{event.type} is ephemeral: published directly at QoS 0, never queued")
        if user_ids is not None and not user_ids and chat_topic is None:
            raise InvalidOutboxRow(f"{event.type} has no recipient")
        if chat_topic is not None and chat_topic != event.chat:
            raise InvalidOutboxRow(f"{event.type} of chat {event.chat} sent to chat {chat_topic}'s topic")
        check_against_contract(event)
    if key is not None and (isinstance(key, bool) or not isinstance(key, int) or key < 0):
        raise InvalidOutboxRow(f"not a partition key: {key!r}")
    return partition_key(event=event, user_ids=user_ids or [], access=access, key=key)


# --- rows a write statement queues itself ------------------------------------------------

# Where a statement fills in the n-th number of a `RowTemplate` (n = 1, 2, ...), the event
# carries slot(n) until then: numbers no id, seq or count reaches (just under bigint's
# maximum).
_SLOT_BASE = 2**63 - 1008  # 9223372036854774800: slot(n) ends in n
_SLOTS = 9
# A slot as the value of an object's key: the key's opening quote cannot be inside a
# string (a string's quotes are escaped), so this never matches in a message's words.
_SLOT_VALUE = re.compile(r'("[A-Za-z_][A-Za-z0-9_]*":)(' + str(_SLOT_BASE)[:-1] + r'[1-9])(?![0-9])')


def slot(n: int) -> int:
    """What an event carries where the write statement fills in its n-th number."""
    if not 1 <= n <= _SLOTS:
        raise ValueError(f"slot {n}: 1 to {_SLOTS}")
    return _SLOT_BASE + n


@dataclass(frozen=True)
class RowTemplate:
    """An outbox row that a write statement inserts itself, in the round trip of the change
    (the message send: `chats.send_sql.SEND`), for numbers only the write knows (a new
    row's id, its seq, a count of members) and recipients it reads under its lock.

    `payload` is the event's JSON as PostgreSQL's `format()` takes it: `%n$s` where the
    event carried `slot(n)` as a key's value, `%%` for a `%`. The statement inserts
    `format(payload, <number 1>, <number 2>, ...)`, its recipients as `user_ids`, and the
    other columns as they are here; its trigger wakes the relay as for any insert.
    Everything else about the row was checked as `enqueue` checks it.
    """

    payload: str
    chat_id: int | None
    partition_key: int
    partition: int


def row_template(*, event: Event, chat_topic: int | None, slots: int) -> RowTemplate | None:
    """The row of `event` (to its recipients' user topics, and the chat's topic if
    `chat_topic`) for a write statement to insert, its numbers slot(1)..slot(`slots`)
    filled in by the statement.

    None when the statement could not fill them all in: a slot's digits elsewhere than as
    a key's value (in a string: a message's words may hold them, an attachment's URL holds
    the message's id). The caller then queues the event itself once it knows the numbers
    (`enqueue`). InvalidOutboxRow if `enqueue` would refuse the row, or for a slot the
    event does not carry (a bug)."""
    row_key = _checked(event=event, user_ids=None, chat_topic=chat_topic, access=[], key=None)
    encoded = event.encode()
    found: dict[int, int] = {}

    def to_placeholder(match: re.Match) -> str:
        n = int(match[2]) - _SLOT_BASE
        found[n] = found.get(n, 0) + 1
        return f"{match[1]}%{n}$s"

    payload = _SLOT_VALUE.sub(to_placeholder, encoded.replace("%", "%%"))
    wanted = set(range(1, slots + 1))
    if not wanted <= set(found):
        raise InvalidOutboxRow(f"{event.type}: slots {sorted(wanted - set(found))} are not in the event")
    if set(found) - wanted or any(encoded.count(str(slot(n))) != found[n] for n in found):
        return None
    return RowTemplate(payload=payload, chat_id=chat_topic, partition_key=row_key,
                       partition=row_key % settings.RELAY_PARTITIONS)


def unqueue(row_id: int) -> None:
    """Take back a row a write statement queued in the current transaction (its caller
    learnt afterwards that the row must say something else, and queues that instead)."""
    assert connection.in_atomic_block, "unqueue() belongs inside the change's transaction"
    OutboxEvent.objects.filter(id=row_id).delete()


def relay_status() -> dict:
    """What the relays last reported: `{"relay": "running"|"down", "broker":
    "up"|"down"|"unknown", "partitions": [{"partition": k, "relay": ..., "broker": ...}, ...]}`.

    Per partition (one heartbeat row each, `RelayStatus`), the broker is `up` only if it
    answered that partition's relay within BROKER_ANSWER_MAX_AGE (a round trip; an open
    socket to a hung broker is `down`), judged now, so a relay that stopped reporting
    cannot leave a stale `up` behind. (The relay's clock and this process's are compared:
    hosts keep time with NTP.) Overall, `relay` is `running` and `broker` `up` only if
    they are for every partition: a partition without a live relay is a share of the
    chats whose messages wait.
    """
    return relay_status_of(relay_heartbeats())


def relay_heartbeats() -> list[RelayStatus]:
    """The heartbeat rows of partitions 0..RELAY_PARTITIONS-1 (missing ones left out), in one query."""
    return list(RelayStatus.objects.filter(id__lte=settings.RELAY_PARTITIONS).order_by("id"))


def relay_status_of(statuses: Iterable[RelayStatus]) -> dict:
    """`relay_status()` judged now from heartbeat rows already read (a partition without
    a row: its relay is down)."""
    now = timezone.now()
    by_partition = {status.id - 1: status for status in statuses}
    partitions = [
        {"partition": k, **_partition_status(by_partition.get(k), now)} for k in range(settings.RELAY_PARTITIONS)
    ]
    if any(p["relay"] == "down" for p in partitions):
        overall = {"relay": "down", "broker": "unknown"}
    elif all(p["broker"] == "up" for p in partitions):
        overall = {"relay": "running", "broker": "up"}
    else:
        overall = {"relay": "running", "broker": "down"}
    return {**overall, "partitions": partitions}


def _partition_status(status: RelayStatus | None, now) -> dict:
    if status is None or now - status.heartbeat_at > RELAY_HEARTBEAT_MAX_AGE:
        return {"relay": "down", "broker": "unknown"}
    answered = status.broker_answered_at
    up = status.broker_connected and answered is not None and now - answered <= BROKER_ANSWER_MAX_AGE
    return {"relay": "running", "broker": "up" if up else "down"}


def oldest_pending() -> tuple[int, float]:
    """(rows in the outbox, age in seconds of the oldest of them; 0.0 when empty), in one
    query (the count scans the table anyway)."""
    found = OutboxEvent.objects.aggregate(pending=Count("id"), oldest=Min("created_at"))
    if found["oldest"] is None:
        return found["pending"], 0.0
    return found["pending"], max(0.0, (timezone.now() - found["oldest"]).total_seconds())


def wait_applied(events: Iterable[OutboxEvent], *, timeout: float | None = None) -> bool:
    """Wait until the relay has applied these rows; True if it did within `timeout`.

    Used where the answer hands out something the broker must already know (fresh MQTT
    credentials, a chat topic one may now subscribe to, a revoked device). It returns at
    once when the relay (of these rows' partitions) or the broker is down, so requests never
    pile up behind an outage;
    the rows stay queued and are applied once the broker is back.
    """
    events = list(events)
    ids = [event.id for event in events]
    if not ids:
        return True
    if connection.in_atomic_block:
        # Not committed yet, so invisible to the relay: waiting could only time out.
        return False
    if timeout is None:
        timeout = settings.BROKER_SYNC_TIMEOUT
    # The partitions that send these rows (another one being down does not stop them).
    partitions = {event.partition for event in events}
    if any(p["broker"] != "up" for p in relay_status()["partitions"] if p["partition"] in partitions):
        return False
    deadline = time.monotonic() + timeout
    pause = 0.002
    while OutboxEvent.objects.filter(id__in=ids).exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    return True


# --- dead letters -----------------------------------------------------------------------


def set_aside(*, failed: dict[int, str], rows: Iterable[OutboxEvent]) -> list[DeadLetter]:
    """Delete `rows` from the outbox and keep those in `failed` (outbox id -> error) as
    dead letters, in one transaction: a row is either still queued or set aside, never
    lost and never both. Each one is logged at ERROR."""
    rows = list(rows)
    letters = [
        DeadLetter(
            outbox_id=row.id,
            created_at=row.created_at,
            access=row.access,
            payload=row.payload,
            user_ids=row.user_ids,
            chat_id=row.chat_id,
            partition_key=row.partition_key,
            error=failed[row.id],
        )
        for row in rows
        if row.id in failed
    ]
    with transaction.atomic():
        DeadLetter.objects.bulk_create(letters)
        OutboxEvent.objects.filter(id__in=[row.id for row in rows]).delete()
    for letter in letters:
        logger.error("outbox #%s set aside as dead letter #%s: %s", letter.outbox_id, letter.id, letter.error)
    return letters


def dead_letters_replay(*, ids: Iterable[int] | None) -> list[OutboxEvent]:
    """Move dead letters (all of them if `ids` is None) back into the outbox, in their
    order, in one transaction. They get new outbox ids: they go to the end of the line,
    behind everything queued since. Unknown ids are ignored."""
    with transaction.atomic():
        letters = DeadLetter.objects.select_for_update().order_by("id")
        if ids is not None:
            letters = letters.filter(id__in=list(ids))
        letters = list(letters)
        # One by one (a rare path): each new id is known whatever the database.
        events = [
            OutboxEvent.objects.create(
                created_at=letter.created_at,
                access=letter.access,
                payload=letter.payload,
                user_ids=letter.user_ids,
                chat_id=letter.chat_id,
                partition_key=letter.partition_key,
                partition=letter.partition_key % settings.RELAY_PARTITIONS,
            )
            for letter in letters
        ]
        DeadLetter.objects.filter(id__in=[letter.id for letter in letters]).delete()
    return events


def dead_letters_discard(*, ids: Iterable[int]) -> int:
    """Delete these dead letters for good; returns how many there were."""
    deleted, _ = DeadLetter.objects.filter(id__in=list(ids)).delete()
    return deleted
