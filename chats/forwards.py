"""Forwards: a message sent again, into any chat, by someone who can read it.

A forward is a new message of its own (its own id, seq, author: the forwarder) that
takes the original's content, type, invitation (without its answers) and file. The file
is not copied: the forward's attachment row names the same stored files, so its links
(`.../attachment/`, signed `/media/` links) are the forward's own, checked against the
forward's chat, and deleting the original (or its chat) keeps the files while a forward
shows them (`media.discard_unreferenced`). `forwarded_from` is the original's author (for
a forward of a forward, the first author), never the original's chat.

Who may forward what: the message must be readable by the forwarder now, by the rule of
reading history (a member of its chat now) and not deleted; anything else is
`message_not_found`, whether it exists or not.
"""

from chats.errors import MessageNotFound
from chats.invites import invite_summary
from chats.models import Attachment, Message
from chats.selectors import MESSAGE_RELATED
from chats.shapes import attachment_or_none


def forward_source(*, user_id: int, message_id: int) -> Message:
    """The message to forward, if `user_id` can read it now (one query); else
    MessageNotFound, the same answer for a message that does not exist."""
    source = (
        Message.objects.filter(id=message_id, deleted=False, chat__memberships__user_id=user_id)
        .select_related(*MESSAGE_RELATED, "author")
        .first()
    )
    if source is None:
        raise MessageNotFound()
    return source


def forward_source_lock(source: Message) -> None:
    """In the forward's transaction: lock the original's row, and refuse if it was deleted
    (or its chat) since it was read. A deletion writes that row, so the two are ordered:
    either the forward fails here, or the deletion sees the forward's attachment when it
    decides which files to delete."""
    if not Message.objects.select_for_update().filter(id=source.id, deleted=False).values_list("id", flat=True):
        raise MessageNotFound()


def forward_mark(message: Message, source: Message) -> None:
    """Make `message` (unsaved) a forward of `source`: its type and whose it is."""
    message.type = source.type
    message.forwarded = True
    if source.forwarded:
        message.forwarded_from_id, message.forwarded_from = source.forwarded_from_id, source.forwarded_from
    else:
        message.forwarded_from_id, message.forwarded_from = source.author_id, source.author


def attachment_copy(source: Message) -> Attachment | None:
    """A new attachment row with the original's stored files and metadata (unsaved)."""
    original = attachment_or_none(source)
    if original is None:
        return None
    return Attachment(
        file=original.file, thumbnail=original.thumbnail, mime=original.mime, size=original.size,
        name=original.name, width=original.width, height=original.height,
    )


def invite_copy(source: Message) -> dict | None:
    """A forwarded invitation is a new one, from the forwarder: the same title, link and
    expiry, no answers."""
    if source.invite is None:
        return None
    return invite_summary(source.invite, answers=[])
