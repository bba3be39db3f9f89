"""What a push says about chats, and to whom: the builders of the `push` worker's jobs.

Registered from `ChatsConfig.ready()`. Each builder runs in the push worker, after the
commit, so it sees the committed rows; it picks the recipients' devices that have a push
token and no live MQTT connection (`accounts.selectors.devices_to_wake`), and builds one
data-only message per device (FCM data values are strings). The app builds the
notification itself from the data.

    message      a new message: every member but the author, unless muted (a member it
                 mentions gets it even so, with `mentioned`); high priority
    read         a read pointer moved: the reader's other devices clear their notification
    invitation   added to a group (at its creation or later): the added members
    reaction     someone reacted to a message: its author, unless it muted the chat;
                 normal priority
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import Count, F, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import Device
from accounts.selectors import devices_to_wake, wakeable_devices
from chats import shapes
from chats.models import Chat, Membership, Message
from chats.selectors import chat_unread_counts
from chatserver.fcm import FcmMessage
from chatserver.push import Delivery

# What a push shows for a message without text.
MEDIA_PREVIEW = {"image": "Photo", "audio": "Audio", "video": "Video", "file": "File"}


def collapse_key(chat_id: int) -> str:
    # One per chat: a phone that was away gets the newest state of each chat, not a pile.
    return f"chat-{chat_id}"


def _preview(message: Message) -> str:
    if message.deleted:
        return ""
    if message.content.strip():
        return message.content[: shapes.PREVIEW_LENGTH]
    return MEDIA_PREVIEW.get(message.type, "")


def _message(*, token: str, data: dict, priority: str, chat_id: int) -> FcmMessage:
    return FcmMessage(
        token=token, data=data, priority=priority, collapse_key=collapse_key(chat_id), ttl_seconds=settings.PUSH_TTL
    )


def build_message(data: dict) -> list[Delivery]:
    """Two queries whatever the chat's size: the message (with its chat and author), then
    the members' devices to wake with what each push needs of the member (mute, read
    pointer, the deleted messages after it) and of the user (previews on or off). The
    push worker builds one job per message sent: four queries a job before (message,
    memberships, devices, deleted messages)."""
    message = Message.objects.select_related("chat", "author").filter(id=data["message_id"]).first()
    if message is None:
        return []  # deleted with its chat since: nothing to say
    chat, now = message.chat, timezone.now()
    mentioned = set(message.mentions)
    devices = [
        device for device in _member_devices_to_wake(chat=chat, author_id=message.author_id, now=now)
        if device.muted_until is None or device.muted_until <= now or device.user_id in mentioned
    ]
    if not devices:
        return []
    common = {
        "type": "message",
        "chat_id": str(chat.id),
        "message_id": str(message.id),
        "seq": str(message.seq),
        "sender_id": str(message.author_id or ""),
        "sender_name": message.author.username if message.author else "",
    }
    if chat.kind == Chat.Kind.GROUP:
        common["chat_name"] = chat.name
    preview = _preview(message)
    deliveries = []
    for device in devices:
        # The rule of chats.selectors.chat_unread_counts: newest seq - read pointer -
        # deleted messages after it.
        unread = max(chat.last_seq - device.last_read_seq - device.deleted_after, 0)
        payload = {**common, "unread_count": str(unread)}
        if device.user_id in mentioned:
            payload["mentioned"] = "true"
        if device.push_previews and preview:
            payload["preview"] = preview
        deliveries.append(Delivery(device.id, _message(
            token=device.push_token, data=payload, priority="high", chat_id=chat.id
        )))
    return deliveries


def _member_devices_to_wake(*, chat: Chat, author_id: int | None, now) -> list[Device]:
    """`accounts.selectors.wakeable_devices` of the chat's members but the author, in one
    query, each device annotated with its member's `muted_until`, `last_read_seq` and
    `deleted_after` (deleted messages after that pointer: the small partial index of
    deleted messages) and its user's `push_previews`."""
    deleted_after = (
        Message.objects.filter(chat_id=chat.id, deleted=True, seq__gt=OuterRef("user__memberships__last_read_seq"))
        .values("chat_id").annotate(n=Count("id")).values("n")
    )
    return list(
        wakeable_devices(now=now)
        .filter(user__memberships__chat_id=chat.id)
        .exclude(user_id=author_id)
        .annotate(
            muted_until=F("user__memberships__muted_until"),
            last_read_seq=F("user__memberships__last_read_seq"),
            deleted_after=Coalesce(Subquery(deleted_after), 0),
            push_previews=F("user__push_previews"),
        )
    )


def build_read(data: dict) -> list[Delivery]:
    membership = Membership.objects.select_related("chat").filter(
        chat_id=data["chat_id"], user_id=data["user_id"]
    ).first()
    if membership is None:
        return []
    unread = chat_unread_counts(chat=membership.chat, memberships=[membership])[membership.user_id]
    payload = {
        "type": "read",
        "chat_id": str(membership.chat_id),
        "last_read_message_id": str(membership.last_read_message_id or ""),
        "unread_count": str(unread),
    }
    return [
        Delivery(device.id, _message(
            token=device.push_token, data=payload, priority="normal", chat_id=membership.chat_id
        ))
        for device in devices_to_wake(user_ids=[membership.user_id], exclude_device_ids=[data.get("device_id")])
    ]


def build_invitation(data: dict) -> list[Delivery]:
    chat = Chat.objects.filter(id=data["chat_id"]).first()
    if chat is None:
        return []
    by = Membership.objects.select_related("user").filter(chat=chat, user_id=data["by"]).first()
    payload = {
        "type": "invitation",
        "chat_id": str(chat.id),
        "chat_name": chat.name,
        "by_id": str(data["by"]),
        "by_name": by.user.username if by else "",
    }
    invited = set(Membership.objects.filter(chat=chat, user_id__in=data["user_ids"]).values_list("user_id", flat=True))
    return [
        Delivery(device.id, _message(
            token=device.push_token, data=payload, priority="high", chat_id=chat.id
        ))
        for device in devices_to_wake(user_ids=sorted(invited))
    ]


def build_reaction(data: dict) -> list[Delivery]:
    message = Message.objects.select_related("chat").filter(id=data["message_id"]).first()
    if message is None or message.deleted or message.author_id is None:
        return []
    membership = Membership.objects.filter(chat=message.chat, user_id=message.author_id).first()
    if membership is None or (membership.muted_until is not None and membership.muted_until > timezone.now()):
        return []
    reactor = Membership.objects.select_related("user").filter(chat=message.chat, user_id=data["user_id"]).first()
    payload = {
        "type": "reaction",
        "chat_id": str(message.chat_id),
        "message_id": str(message.id),
        "emoji": data["emoji"],
        "by_id": str(data["user_id"]),
        "by_name": reactor.user.username if reactor else "",
    }
    return [
        Delivery(device.id, _message(
            token=device.push_token, data=payload, priority="normal", chat_id=message.chat_id
        ))
        for device in devices_to_wake(user_ids=[message.author_id])
    ]
