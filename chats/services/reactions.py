"""Reactions: one of each emoji of a short list per user and message."""

from django.db import transaction

from accounts.models import User
from chats.errors import MessageDeleted, MessageNotFound
from chats.models import Message, Reaction
from chats.selectors import MESSAGE_RELATED, messages_annotate
from chats.services.common import lock_chat, membership_may_post, message_updated
from chatserver import outbox, push
from chatserver.errors import InvalidInput
from chatserver.events import Event, EventType

# The emoji one may react with (the set most messengers offer first). A short list keeps
# the broadcast payload small and every client able to draw each of them.
EMOJI = ("👍", "👎", "❤️", "😂", "😮", "😢", "🙏", "🔥", "🎉")
# Written with or without the emoji presentation selector (U+FE0F): the same emoji.
_CANONICAL = {e.replace("\ufe0f", ""): e for e in EMOJI}
# A message's `reactions` list at most this many user ids per emoji (the first to react);
# `count` is always exact.
USER_IDS_SHOWN = 100


def emoji_canonical(emoji: str) -> str:
    """The listed emoji `emoji` is (with or without U+FE0F); InvalidInput for anything else."""
    canonical = _CANONICAL.get(emoji.replace("\ufe0f", ""))
    if canonical is None:
        raise InvalidInput("emoji", f"React with one of {' '.join(EMOJI)}.")
    return canonical


def reaction_add(*, actor: User, chat_id: int, message_id: int, emoji: str) -> Message:
    """Add the caller's `emoji` to a message; return the message (annotated for
    `shapes.message_output`). Idempotent: a reaction the caller already has changes
    nothing and tells nobody.

    Under the chat's lock: the message takes the chat's next version and its new
    `reactions`; members get `message.updated`; the message's author (unless it is the
    caller) gets `reaction.added` on its user topic, and a push where it sleeps. Who may: those who may post
    (restricted members and a blocked pair in a direct chat may not). Deleted messages
    take none (409).
    """
    return _change(actor=actor, chat_id=chat_id, message_id=message_id, emoji=emoji_canonical(emoji), add=True)


def reaction_remove(*, actor: User, chat_id: int, message_id: int, emoji: str) -> Message:
    """Remove the caller's `emoji` from a message; removing one it does not have changes
    nothing (and is no error). Otherwise as `reaction_add`, without telling the author."""
    return _change(actor=actor, chat_id=chat_id, message_id=message_id, emoji=emoji_canonical(emoji), add=False)


def _change(*, actor: User, chat_id: int, message_id: int, emoji: str, add: bool) -> Message:
    with transaction.atomic():
        chat = lock_chat(chat_id)
        # Under the lock: a kick or a role change cannot slip in.
        membership_may_post(chat_id=chat.id, user_id=actor.id)
        message = Message.objects.filter(chat=chat, id=message_id).select_related(*MESSAGE_RELATED).first()
        if message is None:
            raise MessageNotFound()
        if message.deleted:
            raise MessageDeleted()
        mine = Reaction.objects.filter(message=message, user_id=actor.id, emoji=emoji)
        if add == mine.exists():
            return messages_annotate(chat_id=chat.id, messages=[message])[0]
        if add:
            Reaction.objects.create(message=message, user_id=actor.id, emoji=emoji)
        else:
            mine.delete()
        message.reactions = reactions_summary(message.id)
        message_updated(chat=chat, message=message, fields=["reactions"])
        if add and message.author_id is not None and message.author_id != actor.id:
            outbox.enqueue(
                event=Event(
                    type=EventType.REACTION_ADDED,
                    data={"chat": chat.id, "message": message.id, "user": actor.id, "emoji": emoji},
                ),
                user_ids=[message.author_id],
            )
            # The author's sleeping devices are told too (chats/push.py).
            push.enqueue(kind="reaction", data={"message_id": message.id, "user_id": actor.id, "emoji": emoji})
    return message


def reactions_summary(message_id: int) -> list[dict]:
    """The broadcast form of a message's reactions: each emoji once, in the order it was
    first used, with its exact count and the first USER_IDS_SHOWN users, in order."""
    summary: dict[str, dict] = {}
    for emoji, user_id in Reaction.objects.filter(message_id=message_id).order_by("id").values_list("emoji", "user_id"):
        entry = summary.setdefault(emoji, {"emoji": emoji, "count": 0, "user_ids": []})
        entry["count"] += 1
        if len(entry["user_ids"]) < USER_IDS_SHOWN:
            entry["user_ids"].append(user_id)
    return list(summary.values())
