"""Pins and the archive: a member's own pinned and archived chats, and pinned messages
in a chat (shared by its members)."""

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from chats import shapes
from chats.errors import (
    PINNED_CHATS_MAX,
    PINS_MAX,
    ChatNotFound,
    MessageDeleted,
    MessageNotFound,
    NotAllowed,
    TooManyPinnedChats,
    TooManyPins,
)
from chats.models import Chat, Membership, Message
from chats.selectors import MESSAGE_RELATED, messages_annotate
from chats.services.common import RANK, Role, lock_chat, membership_locked, message_updated
from chatserver import outbox
from chatserver.events import Event, EventType

# --- one's own list: pinned and archived chats ---


def member_pin(*, chat_id: int, actor: User, pinned: bool) -> Membership:
    """Pin the chat at the top of the actor's own list (at most PINNED_CHATS_MAX: 409
    beyond), or unpin it. Pinning an archived chat takes it out of the archive. Pinning
    a pinned chat keeps its place; nothing changes, nobody is told. Otherwise the actor's
    own devices get `chat_list.updated` (nobody else knows).

    The count and the pin are one decision under the actor's user row lock, so two
    devices pinning at once cannot make six."""
    with transaction.atomic():
        User.objects.select_for_update().filter(id=actor.id).values_list("id", flat=True).first()
        membership = _own(chat_id=chat_id, actor=actor)
        if pinned == (membership.pinned_at is not None):
            return membership
        if pinned:
            if Membership.objects.filter(user_id=actor.id, pinned_at__isnull=False).count() >= PINNED_CHATS_MAX:
                raise TooManyPinnedChats()
            membership.pinned_at, membership.archived_at_seq = timezone.now(), None
        else:
            membership.pinned_at = None
        membership.save(update_fields=["pinned_at", "archived_at_seq"])
        list_updated_enqueue(membership)
    return membership


def member_archive(*, chat_id: int, actor: User, archived: bool) -> Membership:
    """Archive the chat for the actor (out of its list until a newer message arrives,
    unless it is muted then; listed with `?archived=true`), or bring it back. Archiving
    unpins. Archiving again (after a message brought it back) archives it anew. The
    actor's own devices get `chat_list.updated` when its state in the list changed."""
    with transaction.atomic():
        membership = _own(chat_id=chat_id, actor=actor)
        before = shapes.list_data(membership, now=timezone.now())
        if archived:
            membership.archived_at_seq, membership.pinned_at = membership.chat.last_seq, None
        else:
            membership.archived_at_seq = None
        membership.save(update_fields=["pinned_at", "archived_at_seq"])
        if shapes.list_data(membership, now=timezone.now()) != before:
            list_updated_enqueue(membership)
    return membership


def list_updated_enqueue(membership: Membership) -> None:
    """Tell the member's own devices where the chat now stands in its list."""
    outbox.enqueue(
        event=Event(
            type=EventType.CHAT_LIST_UPDATED,
            data={"chat": membership.chat_id, **shapes.list_data(membership, now=timezone.now())},
        ),
        user_ids=[membership.user_id],
    )


def _own(*, chat_id: int, actor: User) -> Membership:
    membership = (
        Membership.objects.select_related("user", "chat").filter(chat_id=chat_id, user_id=actor.id).first()
    )
    if membership is None:
        raise ChatNotFound()
    return membership


# --- pinned messages ---


def message_pin(*, actor: User, chat_id: int, message_id: int, pinned: bool) -> Message:
    """Pin a message in its chat (at most PINS_MAX per chat: 409 beyond), or unpin it;
    return it, annotated for `shapes.message_output`. In a group: admins and the owner
    (403 `not_allowed` otherwise); in a direct chat: either member. A deleted message
    cannot be pinned (409), and deleting one unpins it. Pinning a pinned message (or
    unpinning one that is not) changes nothing and tells nobody.

    Under the chat's lock: the message takes the chat's next version; members get
    `message.updated` with its `pinned_at` and `pinned_by`."""
    with transaction.atomic():
        chat = lock_chat(chat_id)
        actor_member = membership_locked(chat=chat, user_id=actor.id)
        if chat.kind == Chat.Kind.GROUP and RANK[actor_member.role] < RANK[Role.ADMIN]:
            raise NotAllowed("Only admins and the owner can pin messages in a group.")
        message = Message.objects.filter(chat=chat, id=message_id).select_related(*MESSAGE_RELATED).first()
        if message is None:
            raise MessageNotFound()
        if pinned and message.deleted:
            raise MessageDeleted()
        if pinned == (message.pinned_at is not None):
            return messages_annotate(chat_id=chat.id, messages=[message])[0]
        if pinned:
            if Message.objects.filter(chat=chat, pinned_at__isnull=False).count() >= PINS_MAX:
                raise TooManyPins()
            message.pinned_at, message.pinned_by_id = timezone.now(), actor.id
        else:
            message.pinned_at, message.pinned_by_id = None, None
        message_updated(chat=chat, message=message, fields=["pinned_at", "pinned_by"])
    return message
