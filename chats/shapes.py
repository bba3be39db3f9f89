"""The API shapes of chats, members and messages: pure functions from rows to JSON-able
dicts, the one place they are built.

The MQTT events carry the same shapes, so an event carries exactly what the HTTP API
returns for the same object. (The output serializers in `chats.serializers` describe
them for the OpenAPI schema; docs/asyncapi.yaml for the events.)
"""

from datetime import datetime

from chats.models import Attachment, Chat, Membership, Message

# What a deleted message shows instead of its content (the row is kept).
DELETED_CONTENT = "This message was deleted."
PREVIEW_LENGTH = 100


def reply_preview(original: Message | None) -> dict | None:
    """A short preview of the message replied to; it follows the original's edits and
    deletion because it is built when the reply is read, not stored."""
    if original is None:
        return None
    return {
        "id": original.id,
        "author": original.author_id,
        "content": original.content[:PREVIEW_LENGTH],
        "deleted": original.deleted,
    }


def attachment_or_none(message: Message) -> Attachment | None:
    try:
        return message.attachment
    except Attachment.DoesNotExist:
        return None


def attachment_data(message: Message) -> dict | None:
    """The attachment's metadata (never its bytes). URLs are paths on the API's host and
    need a member's token; `.../attachment/link/` gives a short-lived signed one."""
    attachment = attachment_or_none(message)
    if attachment is None:
        return None
    base = f"/chats/{message.chat_id}/messages/{message.id}/attachment/"
    return {
        "url": base,
        "thumbnail_url": f"{base}thumbnail/" if attachment.thumbnail else None,
        "mime": attachment.mime,
        "size": attachment.size,
        "name": attachment.name,
        "width": attachment.width,
        "height": attachment.height,
    }


def message_data(message: Message, *, unread_count: int, reply_preview: dict | None = None) -> dict:
    return {
        "id": message.id,
        "chat": message.chat_id,
        "seq": message.seq,
        "author": message.author_id,
        "type": message.type,
        "content": message.content,
        "reply_to": message.reply_to_id,
        "reply_preview": reply_preview,
        "client_id": message.client_id,
        "created_at": message.created_at,
        "edited_at": message.edited_at,
        "deleted": message.deleted,
        "version": message.version,
        "unread_count": unread_count,
        "attachment": attachment_data(message),
        "reactions": message.reactions,
        "mentions": message.mentions,
        # pins, forwards, invitations
        "pinned_at": message.pinned_at,
        "pinned_by": message.pinned_by_id,
        "forwarded": message.forwarded,
        "forwarded_from": forwarded_from_data(message),
        "invite": message.invite,
        "link_preview": message.link_preview,
    }


# --- pins, forwards, invitations ---


def forwarded_from_data(message: Message) -> dict | None:
    """The author of the message a forward copies, `{id, username, display_name}`, as it
    is now (never the original's chat); null for a message that is no forward, and for a
    forward whose original author deleted the account (`forwarded` still says it is one).
    Reads `message.forwarded_from`: load it with the message (`selectors.MESSAGE_RELATED`)."""
    if message.forwarded_from_id is None:
        return None
    user = message.forwarded_from
    if user.deleted_at is not None:
        return None
    return {"id": user.id, "username": user.username, "display_name": user.display_name}


def message_output(message: Message) -> dict:
    """The API object of a message that carries `unread_count` and `reply_original` (the
    message it replies to, or None), as `selectors.messages_annotate` and the send give."""
    return message_data(
        message, unread_count=message.unread_count, reply_preview=reply_preview(message.reply_original)
    )


def member_data(membership: Membership) -> dict:
    return {
        "id": membership.user_id,
        "username": membership.user.username,
        "role": membership.role,
        "last_read_message_id": membership.last_read_message_id,
        "last_delivered_message_id": membership.last_delivered_message_id,
    }


def mute_data(membership: Membership, *, now: datetime) -> dict:
    """One's own mute of a chat: shown to oneself only, never in events to others."""
    until = membership.muted_until
    return {"muted_until": until, "muted": until is not None and until > now}


def list_data(membership: Membership, *, now: datetime) -> dict:
    """Where the chat stands in one's own list: pinned (first), archived (out of the main
    list). Archived means archived and, since, no newer message or still muted (reads
    `membership.chat.last_seq`). Shown to oneself only, like the mute."""
    archived = membership.archived_at_seq is not None and (
        membership.chat.last_seq <= membership.archived_at_seq
        or (membership.muted_until is not None and membership.muted_until > now)
    )
    return {"pinned": membership.pinned_at is not None, "archived": archived}


def member_output(membership: Membership, *, caller_id: int, now: datetime) -> dict:
    """A member as the caller sees it (members list, member changes): its own entry also
    carries its mute, which events to the others never do."""
    data = member_data(membership)
    if membership.user_id == caller_id:
        data.update(mute_data(membership, now=now))
        data.update(list_data(membership, now=now))
    return data


def chat_data(chat: Chat, members: list[Membership]) -> dict:
    return {
        "id": chat.id,
        "type": chat.kind,
        "name": chat.name,
        "created_at": chat.created_at,
        "last_seq": chat.last_seq,
        "version": chat.version,
        "members": [member_data(m) for m in members],
    }


# --- Search --------------------------------------------------------------------------


def search_hit_data(message: Message) -> dict:
    """A search hit: where the message is (open the chat's history around `id`), and a
    plain-text snippet with its matches as UTF-16 offsets (`chats.search.snippet`)."""
    from chats import search

    text, highlights = search.snippet(
        message.content, message.search_words, substring=message.search_substring
    )
    return {
        "id": message.id,
        "chat": message.chat_id,
        "seq": message.seq,
        "author": message.author_id,
        "type": message.type,
        "created_at": message.created_at,
        "edited_at": message.edited_at,
        "snippet": text,
        "highlights": highlights,
    }
