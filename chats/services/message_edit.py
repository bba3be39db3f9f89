"""Edits and soft deletes of messages (by members, and by operators from the admin)."""

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from chats import media, shapes
from chats.errors import ChatNotFound, MessageDeleted, MessageNotFound, NotAllowed, NotAuthor
from chats.mentions import mentioned_ids, mentions_replace
from chats.models import Chat, InviteAnswer, Message, Reaction
from chats.previews import first_link
from chats.selectors import MESSAGE_RELATED, messages_annotate
from chats.services.previews import preview_requeue
from chats.services.common import (
    RANK,
    Role,
    lock_chat,
    membership_locked,
    message_updated,
)


def message_update(
    *, chat_id: int, actor: User, message_id: int, content: str | None = None, delete: bool = False
) -> Message:
    """Edit (the author only; sets `edited_at`) or soft-delete (the author, or an admin or
    the owner of a group) a message; return it, annotated for `shapes.message_output`.
    Members get `message.updated`.

    A deleted message keeps its row, seq and place in history; its content is replaced
    by a fixed text, replies' previews follow, it no longer counts as unread, and it
    loses its reactions and mentions, its pin, and an invitation's `invite` and answers
    (its type stays `invite`). An edit sets the mentions of the new content.
    Deleting again changes nothing; editing a deleted message is 409.
    """
    with transaction.atomic():
        chat = lock_chat(chat_id)
        actor_member = membership_locked(chat=chat, user_id=actor.id)
        message = Message.objects.filter(chat=chat, id=message_id).select_related(*MESSAGE_RELATED).first()
        if message is None:
            raise MessageNotFound()
        if delete:
            may = message.author_id == actor.id or (
                chat.kind == Chat.Kind.GROUP and RANK[actor_member.role] >= RANK[Role.ADMIN]
            )
            if not may:
                raise NotAllowed("Only the author, or an admin of the group, can delete this message.")
            if message.deleted:
                return messages_annotate(chat_id=chat.id, messages=[message])[0]
            _soft_delete(message)
        else:
            if message.author_id != actor.id:
                raise NotAuthor()
            if message.deleted:
                raise MessageDeleted()
            message.content = content
            message.edited_at = timezone.now()
            mentions_replace(message, mentioned_ids(chat_id=chat.id, author_id=message.author_id, content=content))
            preview_requeue(message)
        message_updated(chat=chat, message=message, fields=EDITED_FIELDS)
    return message


def message_moderate(*, actor: User, message_id: int) -> Message:
    """An operator (staff, from the admin) soft-deletes a message in any chat, exactly as
    its author could: same text, attachment gone, the chat's next version, and members
    get `message.updated`. Deleting again changes nothing."""
    if not (actor.is_active and actor.is_staff):
        raise NotAllowed("Only operators can delete messages in any chat.")
    chat_id = Message.objects.filter(id=message_id).values_list("chat_id", flat=True).first()
    if chat_id is None:
        raise MessageNotFound()
    with transaction.atomic():
        chat = lock_chat(chat_id)
        message = Message.objects.filter(chat=chat, id=message_id).select_related(*MESSAGE_RELATED).first()
        if message is None:
            raise MessageNotFound()
        if not message.deleted:
            _soft_delete(message)
            message_updated(chat=chat, message=message, fields=EDITED_FIELDS)
    return message


def _soft_delete(message: Message) -> None:
    message.deleted = True
    message.content = shapes.DELETED_CONTENT
    _attachment_drop(message)
    mentions_replace(message, [])
    message.link_preview = None  # a queued job finds the message deleted and drops itself
    if message.reactions:
        Reaction.objects.filter(message_id=message.id).delete()
        message.reactions = []
    # pins, invitations: a deleted message is unpinned and loses its invitation's answers
    message.pinned_at, message.pinned_by_id = None, None
    if message.invite is not None:
        InviteAnswer.objects.filter(message_id=message.id).delete()
        message.invite = None


# What an edit or a deletion may change.
EDITED_FIELDS = ["content", "deleted", "edited_at", "mentions", "reactions", "pinned_at", "pinned_by", "invite",
                 "link_preview"]


def _attachment_drop(message: Message) -> None:
    """Delete a message's attachment; its files go once that is committed."""
    attachment = shapes.attachment_or_none(message)
    if attachment is None:
        return
    names = (attachment.file, attachment.thumbnail)
    attachment.delete()
    Message.attachment.related.set_cached_value(message, None)
    transaction.on_commit(lambda: media.discard_unreferenced(*names))


# --- Link previews --------------------------------------------------------------------


def message_preview_set(*, message_id: int, url: str, preview: dict | None) -> bool:
    """The `previews` worker read the page of `url`, the link a job was queued for:
    store its preview on the message, with the chat's next version, and members get
    `message.updated`; return whether it did.

    Under the chat's lock, and only if the message is still there, not deleted, its
    first link is still `url` (an edit since queued its own job) and the preview is new;
    a page that showed nothing (`preview` None) changes nothing.
    """
    chat_id = Message.objects.filter(id=message_id).values_list("chat_id", flat=True).first()
    if chat_id is None or preview is None:
        return False
    with transaction.atomic():
        try:
            chat = lock_chat(chat_id)
        except ChatNotFound:
            return False
        message = Message.objects.filter(chat=chat, id=message_id).select_related(*MESSAGE_RELATED).first()
        if message is None or message.deleted or first_link(message.content) != url:
            return False
        value = {"url": url, **preview}
        if message.link_preview == value:
            return False
        message.link_preview = value
        message_updated(chat=chat, message=message, fields=["link_preview"])
    return True
