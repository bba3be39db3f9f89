"""Mentions: `@username` names a member of the chat; `@all` in a group, written by an
admin or the owner, names every other member (from anyone else it is plain text).

On the send's hot path: content without '@' costs nothing (no parsing, no query); with
one, the names are resolved in one query restricted to the chat's members. A name that
is no member's (or the author's own) mentions nobody and is left as it is, plain text.
`@all` is a keyword: it never names a user called "all".
"""

import re

from django.db.models.functions import Lower

from chats.models import Chat, Membership, Mention, Message

# `@` not glued to a name before it (so `bob@example.org` is no mention), then a
# username's characters (accounts.models.UsernameValidator: ASCII letters, digits, . _ -).
_MENTION = re.compile(r"(?<![A-Za-z0-9_.@-])@([A-Za-z0-9_.-]{3,32})")
EVERYONE = "all"
# More distinct names than this in one message: the rest are plain text.
MAX_NAMES = 50


def names_in(content: str) -> set[str]:
    """The lower-cased names `@`-mentioned in `content` (a name followed by a full stop
    or a dash, as at the end of a sentence, is tried with and without them)."""
    names: set[str] = set()
    for match in _MENTION.finditer(content):
        name = match.group(1).lower()
        names.add(name)
        trimmed = name.rstrip(".-")
        if trimmed != name and len(trimmed) >= 3:
            names.add(trimmed)
        if len(names) >= MAX_NAMES:
            break
    return names


def mentioned_ids(*, chat_id: int, author_id: int, content: str) -> list[int]:
    """The user ids `content` mentions in this chat, sorted, without the author; no query
    when the content has no '@'."""
    if "@" not in content:
        return []
    names = names_in(content)
    if not names:
        return []
    members = Membership.objects.filter(chat_id=chat_id)
    if EVERYONE in names:
        # Who may say @all depends on the author's role: read every member at once.
        rows = list(members.values_list("user_id", "user__username", "role", "chat__kind"))
        author = next((row for row in rows if row[0] == author_id), None)
        everyone = author is not None and author[3] == Chat.Kind.GROUP and author[2] in (
            Membership.Role.OWNER, Membership.Role.ADMIN
        )
        ids = {uid for uid, username, _, _ in rows if everyone or username.lower() in names}
    else:
        ids = set(
            members.annotate(name=Lower("user__username")).filter(name__in=names).values_list("user_id", flat=True)
        )
    ids.discard(author_id)
    return sorted(ids)


def mentions_store(message: Message) -> None:
    """Write the `Mention` rows of a just-sent message (one statement; none without mentions)."""
    if message.mentions:
        Mention.objects.bulk_create(
            [Mention(message_id=message.id, user_id=uid, chat_id=message.chat_id, seq=message.seq)
             for uid in message.mentions]
        )


def mentions_replace(message: Message, mentions: list[int]) -> None:
    """Set an existing message's mentions (an edit, or [] for a deletion); the caller saves
    the message. No statement when they do not change."""
    if mentions == list(message.mentions):
        return
    if message.mentions:
        Mention.objects.filter(message_id=message.id).delete()
    message.mentions = mentions
    mentions_store(message)
