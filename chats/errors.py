"""The errors of chats, members, messages and attachments, with their codes."""

from enum import StrEnum, unique

from django.conf import settings

from chatserver.errors import ApplicationError, Conflict, NotFound, PermissionDenied


@unique
class ChatsErrorCode(StrEnum):
    CHAT_NOT_FOUND = "chat_not_found"
    MESSAGE_NOT_FOUND = "message_not_found"
    ATTACHMENT_NOT_FOUND = "attachment_not_found"
    INVALID_CURSOR = "invalid_cursor"
    CANNOT_POST = "cannot_post"
    NOT_ALLOWED = "not_allowed"
    NOT_A_GROUP = "not_a_group"
    NOT_AUTHOR = "not_author"
    MESSAGE_DELETED = "message_deleted"
    LINK_EXPIRED = "link_expired"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    # pins, forwards, invitations
    TOO_MANY_PINNED_CHATS = "too_many_pinned_chats"
    TOO_MANY_PINS = "too_many_pins"
    NOT_AN_INVITATION = "not_an_invitation"
    INVITATION_EXPIRED = "invitation_expired"
    OWN_INVITATION = "own_invitation"


class ChatNotFound(NotFound):
    """No such chat, or not one of the caller's: the same answer, so ids tell nothing."""

    code = ChatsErrorCode.CHAT_NOT_FOUND
    message = "Chat not found."


class MessageNotFound(NotFound):
    code = ChatsErrorCode.MESSAGE_NOT_FOUND
    message = "Message not found."


class AttachmentNotFound(NotFound):
    code = ChatsErrorCode.ATTACHMENT_NOT_FOUND
    message = "Attachment not found."


class InvalidCursor(ApplicationError):
    code = ChatsErrorCode.INVALID_CURSOR
    message = "No such message in this chat."


class CannotPost(PermissionDenied):
    code = ChatsErrorCode.CANNOT_POST
    message = "Restricted members cannot post in this chat."


class NotAllowed(PermissionDenied):
    code = ChatsErrorCode.NOT_ALLOWED
    message = "Your role in this chat does not allow this."


class NotAGroup(ApplicationError):
    code = ChatsErrorCode.NOT_A_GROUP
    message = "Direct chats always have exactly their two members."


class NotAuthor(PermissionDenied):
    code = ChatsErrorCode.NOT_AUTHOR
    message = "Only the author can edit a message."


class MessageDeleted(ApplicationError):
    status_code = 409
    code = ChatsErrorCode.MESSAGE_DELETED
    message = "This message was deleted."


class LinkExpired(ApplicationError):
    status_code = 403
    code = ChatsErrorCode.LINK_EXPIRED
    message = "This link has expired; ask for a new one."


class PayloadTooLarge(ApplicationError):
    status_code = 413
    code = ChatsErrorCode.PAYLOAD_TOO_LARGE

    def __init__(self) -> None:
        limit = settings.ATTACHMENT_MAX_SIZE // (1024 * 1024)
        super().__init__(f"Files are limited to {limit} MB.")


# --- pins, forwards, invitations ---

# At most this many pinned chats per member, and pinned messages per chat.
PINNED_CHATS_MAX = 5
PINS_MAX = 50


class TooManyPinnedChats(Conflict):
    code = ChatsErrorCode.TOO_MANY_PINNED_CHATS
    message = f"At most {PINNED_CHATS_MAX} chats can be pinned; unpin one first."


class TooManyPins(Conflict):
    code = ChatsErrorCode.TOO_MANY_PINS
    message = f"At most {PINS_MAX} messages can be pinned in a chat; unpin one first."


class NotAnInvitation(ApplicationError):
    code = ChatsErrorCode.NOT_AN_INVITATION
    message = "This message is not an invitation."


class InvitationExpired(Conflict):
    code = ChatsErrorCode.INVITATION_EXPIRED
    message = "This invitation has expired."


class OwnInvitation(Conflict):
    code = ChatsErrorCode.OWN_INVITATION
    message = "You cannot answer your own invitation."
