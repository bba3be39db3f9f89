"""The data of each chat event: pure functions from rows to JSON-able dicts.

These are also the HTTP API's output shapes, so an event carries exactly what the API
returns for the same object.
"""

from chats.models import Chat, Membership, Message


def message_data(message: Message, *, unread_count: int) -> dict:
    return {
        "id": message.id,
        "chat": message.chat_id,
        "seq": message.seq,
        "author": message.author_id,
        "type": message.type,
        "content": message.content,
        "reply_to": message.reply_to_id,
        "client_id": message.client_id,
        "created_at": message.created_at,
        "edited_at": message.edited_at,
        "deleted": message.deleted,
        "unread_count": unread_count,
        "attachment": None,
    }


def member_data(membership: Membership) -> dict:
    return {
        "id": membership.user_id,
        "username": membership.user.username,
        "role": membership.role,
        "last_read_message_id": membership.last_read_message_id,
    }


def chat_data(chat: Chat, members: list[Membership]) -> dict:
    return {
        "id": chat.id,
        "type": chat.kind,
        "name": chat.name,
        "created_at": chat.created_at,
        "last_seq": chat.last_seq,
        "members": [member_data(m) for m in members],
    }
