"""Reads about chats. Every fetch that checks access says so and answers "not found"
both for a chat that does not exist and for one the caller is not in."""

from bisect import bisect_left

from chats.models import Membership, Message
from chatserver.errors import NotFound


class ChatNotFound(NotFound):
    code = "chat_not_found"
    message = "Chat not found."


class MessageNotFound(NotFound):
    code = "message_not_found"
    message = "Message not found."


def membership_get_for_member(*, chat_id: int, user_id: int) -> Membership:
    """The caller's membership, with its chat; ChatNotFound when there is none."""
    membership = (
        Membership.objects.select_related("chat").filter(chat_id=chat_id, user_id=user_id).first()
    )
    if membership is None:
        raise ChatNotFound()
    return membership


def chat_members(*, chat_id: int) -> list[Membership]:
    return list(
        Membership.objects.filter(chat_id=chat_id).select_related("user").order_by("joined_at", "id")
    )


def message_page(
    *, chat_id: int, before: int | None, after: int | None, limit: int
) -> tuple[list[Message], bool]:
    """A page of history, oldest first, and whether there is more beyond it.

    With `after`, the page starts right after that message and `has_more` says whether
    newer ones follow (up to `before`, when given). Otherwise it is the newest page below
    `before` (or the newest of all) and `has_more` says whether older ones precede it.
    Cursors are message ids, which grow with seq inside a chat.
    """
    messages = Message.objects.filter(chat_id=chat_id)
    if before is not None:
        messages = messages.filter(id__lt=before)
    if after is not None:
        page = list(messages.filter(id__gt=after).order_by("id")[: limit + 1])
        return page[:limit], len(page) > limit
    page = list(messages.order_by("-id")[: limit + 1])
    has_more = len(page) > limit
    page = page[:limit]
    page.reverse()
    return page, has_more


def message_unread_counts(*, chat_id: int, messages: list[Message]) -> dict[int, int]:
    """For each message, how many members have not read it yet.

    From the read pointers alone: one query for the chat's pointers, then a binary search
    per message. A member's pointer starts at the chat's seq when it joined, so a member
    never counts for messages from before it joined.
    """
    if not messages:
        return {}
    pointers = sorted(
        Membership.objects.filter(chat_id=chat_id).values_list("last_read_seq", flat=True)
    )
    return {m.id: 0 if m.deleted else bisect_left(pointers, m.seq) for m in messages}


def message_get_in_chat(*, chat_id: int, message_id: int) -> Message:
    message = Message.objects.filter(chat_id=chat_id, id=message_id).first()
    if message is None:
        raise MessageNotFound()
    return message

