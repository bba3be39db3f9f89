"""What every chat write shares: the chat's row lock, roles' ranks, and chat shapes.

Every change to a chat locks the chat's row first (`lock_chat`, or the seq bump of the
send statement), then writes its rows and its outbox row in the same transaction. Hence:
seqs have no gap and no duplicate, outbox rows of one chat are in commit order (the relay
keeps per-chat order), and a membership check cannot race a kick.
"""

from django.db.models import Q

from accounts.errors import BlockedError
from accounts.models import Block
from chats.errors import CannotPost, ChatNotFound
from chats import shapes
from chats.models import Chat, Membership, Message
from chats.selectors import messages_annotate
from chatserver import outbox
from chatserver.events import Event, EventType

Role = Membership.Role

# Who outranks whom; an actor acts only on members it outranks (or on itself).
RANK = {Role.OWNER: 3, Role.ADMIN: 2, Role.MEMBER: 1, Role.RESTRICTED: 0}


def lock_chat(chat_id: int) -> Chat:
    """The chat, its row locked until the transaction ends; ChatNotFound if it is gone."""
    chat = Chat.objects.select_for_update().filter(id=chat_id).first()
    if chat is None:
        raise ChatNotFound()
    return chat


def membership_locked(*, chat: Chat, user_id: int) -> Membership:
    """A membership re-read under the chat's lock (roles may have changed meanwhile);
    ChatNotFound for a user who is not (or no longer) a member."""
    membership = Membership.objects.select_related("user").filter(chat=chat, user_id=user_id).first()
    if membership is None:
        raise ChatNotFound()
    return membership


def membership_may_post(*, chat_id: int, user_id: int) -> Membership:
    """The caller's membership (with its chat) if it may post there, as the send decides
    it: ChatNotFound for outsiders, CannotPost for restricted members, BlockedError in a
    direct chat with a block either way (one query, two in a direct chat)."""
    membership = Membership.objects.select_related("chat").filter(chat_id=chat_id, user_id=user_id).first()
    if membership is None:
        raise ChatNotFound()
    if membership.role == Role.RESTRICTED:
        raise CannotPost()
    if membership.chat.kind == Chat.Kind.DIRECT and Block.objects.filter(
        Q(user_id=user_id, blocked__memberships__chat_id=chat_id)
        | Q(blocked_id=user_id, user__memberships__chat_id=chat_id)
    ).exists():
        raise BlockedError("You cannot message this user.")
    return membership


def member_ids(chat_id: int) -> list[int]:
    return list(Membership.objects.filter(chat_id=chat_id).values_list("user_id", flat=True))


# Chat events that leave the chat's version alone, and why. Every other chat event is a
# change that /chats/sync/ must be able to replay, so it takes the chat's next version.
UNVERSIONED: dict[EventType, str] = {
    EventType.TYPING_UPDATED: (
        "ephemeral (QoS 0, never stored): it changes nothing that /chats/sync/ could replay"
    ),
    EventType.READ_UPDATED: (
        "pointers move many times per message and without the chat's lock; /chats/sync/ "
        "answers the members' current pointers instead of replaying each move"
    ),
}

# The same for one variant of an event type, named by a flag set in its data.
UNVERSIONED_WHEN: dict[tuple[EventType, str], str] = {
    (EventType.CHAT_DELETED, "hidden"): (
        "hiding a direct chat changes it for the hider's own list only; the other member "
        "must not see a change, so only the hider's devices are told"
    ),
}


def bumps_version(type: EventType, data: dict) -> bool:
    """Whether an event of this type, with this data, is a change of its chat's version."""
    if type in UNVERSIONED:
        return False
    return not any(data.get(flag) for (t, flag) in UNVERSIONED_WHEN if t == type)


def chat_version_bump(chat: Chat) -> int:
    """Bump the chat's version (the caller holds the chat's row lock: no gap)."""
    chat.version += 1
    Chat.objects.filter(id=chat.id).update(version=chat.version)
    return chat.version


def chat_event(
    *,
    chat: Chat | int,
    type: EventType,
    data: dict,
    user_ids,
    access=(),
    to_chat_topic: bool = True,
    version: int | None = None,
) -> outbox.OutboxEvent:
    """Queue a chat event: the one way a chat event enters the outbox.

    Events that change the chat (`bumps_version`) take its next version, under the chat's
    row lock the caller holds; pass `version` only when the write itself already took it
    (the message send statement). The others carry none.
    """
    chat_id = chat if isinstance(chat, int) else chat.id
    if bumps_version(type, data):
        if version is None:
            version = chat_version_bump(chat)
    elif version is not None:
        raise outbox.InvalidOutboxRow(f"{type} does not change the chat's version")
    return outbox.enqueue(
        event=Event(type=type, data=data, chat=chat_id, version=version),
        user_ids=user_ids,
        chat_topic=chat_id if to_chat_topic else None,
        access=access,
    )


def chat_event_row(*, chat: int, type: EventType, data: dict, version: int, slots: int) -> outbox.RowTemplate | None:
    """`chat_event`'s row, to the members and the chat's topic, for a write statement that
    inserts it itself (the message send: `chats.send_sql.SEND`) and fills in the numbers
    `outbox.slot(1)`..`outbox.slot(slots)` that `data` and `version` carry (its version
    is the one it takes). None when it cannot: the caller queues it with `chat_event`
    after the write (`outbox.row_template`)."""
    if not bumps_version(type, data):
        raise outbox.InvalidOutboxRow(f"{type} does not change the chat's version")
    return outbox.row_template(event=Event(type=type, data=data, chat=chat, version=version), chat_topic=chat,
                               slots=slots)


def message_updated(*, chat: Chat, message: Message, fields: list[str]) -> None:
    """Store the message's changed `fields` with the chat's next version, and queue
    `message.updated` (the message as members read it) to the members. The caller holds
    the chat's row lock. The one way an existing message changes for its readers: edits,
    deletions, reactions, pins, invitation answers, link previews."""
    message.version = chat_version_bump(chat)
    message.save(update_fields=[*fields, "version"])
    messages_annotate(chat_id=chat.id, messages=[message])
    chat_event(
        chat=chat,
        type=EventType.MESSAGE_UPDATED,
        data=shapes.message_output(message),
        user_ids=member_ids(chat.id),
        version=message.version,
    )
