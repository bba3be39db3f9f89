"""The message send: the hottest path (its statements are in `chats.send_sql`)."""

import copy
import functools
import json
from typing import NoReturn

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.authentication import device_confirm
from accounts.errors import BlockedError
from accounts.models import Device, User
from chats import forwards, media, send_sql, shapes
from chats.mentions import mentioned_ids, mentions_store
from chats.errors import CannotPost, ChatNotFound
from chats.models import Attachment, Membership, Message
from chats.selectors import MESSAGE_RELATED, messages_annotate
from chats.services.common import Role, chat_event, chat_event_row
from chats.services.previews import preview_queue
from chatserver import outbox, push
from chatserver.prepared import prepared_cursor
from chatserver.errors import InvalidInput
from chatserver.events import EventType

# The push job of a new message (`chats.push.build_message`), data {"message_id": id}.
PUSH_KIND = "message"


def message_send(
    *,
    actor: User,
    chat_id: int,
    content: str,
    reply_to_id: int | None = None,
    client_id: str | None = None,
    upload=None,
    forward_of_id: int | None = None,
    invite: dict | None = None,
    device: Device | None = None,
) -> tuple[Message, bool]:
    """Store a message (with its file, if any) and queue its event atomically; return
    (message, created). The message carries `unread_count` and `reply_original`, for
    `chats.shapes.message_output`.

    The check that the author may post and the taking of the next seq are one statement
    under the chat's row lock, so concurrent senders get 1, 2, 3... and a kick or a block
    cannot slip in between the check and the write. The same (author, client_id) again
    returns the first message (created=False) and writes nothing, not even the file, also
    when the two requests race. The author's read and delivered pointers move to the new
    message. Members get `message.created` on their user topics and the chat's topic,
    carrying the very object the API returns for it. `@username` and `@all` set its
    `mentions` (`chats.mentions`: no query without an '@' in the content, one with it).

    On PostgreSQL the message, the seq, the pointers, the outbox row and the push job are
    written by one statement (`send_sql.SEND`; a message with a file has its outbox row
    queued by a second, its URL holds the message's id); on SQLite through
    `send_sql.SEQ_BUMP` and the ORM. Both keep the guarantees above (the suite runs the
    send on both).

    A file is classified and stored before the transaction (outside the chat's lock);
    if anything fails afterwards it is deleted again: no orphan file.

    `forward_of_id`: a forward of a message the actor can read now (`chats.forwards`):
    its content, type, invitation and file (the same stored file, no copy) with
    `forwarded_from`; `invite`: an invitation (`chats.invites.invite_new`). Either costs
    the write one more statement on PostgreSQL (their columns; the send's statement names
    only a plain message's) and a forward two (its original, read and row-locked); a
    plain message costs nothing for them.

    `device`: the device the request came from, whose token may have come from a cache
    (`accounts.authentication.TOKEN_CACHE`). The write statement itself checks that it is
    still signed in (its row there with that token hash, its user active), and a refused
    write, or a retry answered with the first message, checks it before anything else
    (`accounts.authentication.device_confirm`): TokenRevoked (401), nothing written. What
    a reply or a forward reads before the write is refused too if the device is gone
    (the write is, or the view confirms the device before any other answer).
    """
    if upload is not None or forward_of_id is not None:
        # A retry must not even store its file (nor fail because the original it forwards
        # was deleted since): look before. (The write looks for itself, under the chat's
        # lock.)
        sent = _message_sent_before(chat_id=chat_id, author_id=actor.id, client_id=client_id)
        if sent is not None:
            device_confirm(device)  # answered without the write, which would have checked it
            return sent, False
    if (reply_to_id is not None or upload is not None) and not Membership.objects.filter(
        chat_id=chat_id, user_id=actor.id
    ).exists():
        # Before looking up the replied message (no oracle for outsiders) or storing a
        # file; a plain message is checked by the write itself.
        raise ChatNotFound()
    original = None
    if reply_to_id is not None:
        original = Message.objects.filter(id=reply_to_id, chat_id=chat_id).first()
        if original is None:
            raise InvalidInput("reply_to", "No such message in this chat.")
    attachment, stored, source = None, (), None
    if forward_of_id is not None:
        source = forwards.forward_source(user_id=actor.id, message_id=forward_of_id)
        content, invite, attachment = source.content, forwards.invite_copy(source), forwards.attachment_copy(source)
    if upload is not None:
        sniffed = media.sniff(upload)
        stored = media.store(chat_id=chat_id, upload=upload, sniffed=sniffed)
        attachment = Attachment(
            file=stored[0], thumbnail=stored[1], mime=sniffed.mime, size=upload.size,
            name=media.display_name(upload.name), width=sniffed.width, height=sniffed.height,
        )
    message = Message(
        chat_id=chat_id, author_id=actor.id, type=_type_of(attachment), content=content,
        reply_to=original, client_id=client_id or None, created_at=timezone.now(),
        # A forward's words are not the forwarder's: they mention nobody.
        mentions=[] if source else mentioned_ids(chat_id=chat_id, author_id=actor.id, content=content),
    )
    if invite is not None:
        message.type, message.invite = Message.Type.INVITE, invite
    if source is not None:
        forwards.forward_mark(message, source)
    if connection.vendor == "postgresql":
        # Built before the transaction, so the chat's lock is held for the write alone. A
        # file's URL holds the message's id, which the write statement cannot fill in.
        created = _created_row(message, original) if attachment is None else None
        insert = functools.partial(_insert_one_statement, created=created)
    else:
        insert = _insert_orm
    try:
        with transaction.atomic():
            if source is not None:
                forwards.forward_source_lock(source)
            sent = insert(message, device)
            if sent is None:
                _message_created(message=message, attachment=attachment, original=original)
    except IntegrityError:
        # Most likely a concurrent request with the same client_id committed first.
        media.discard(*stored)
        sent = _message_sent_before(chat_id=chat_id, author_id=actor.id, client_id=client_id)
        if sent is not None:
            return sent, False
        raise
    except BaseException:
        media.discard(*stored)
        raise
    if sent is not None:
        media.discard(*stored)
        return sent, False
    return message, True


def _insert_one_statement(
    message: Message, device: Device | None, *, created: outbox.RowTemplate | None
) -> Message | None:
    """Write `message` (setting its id, seq and version, and `member_ids`), its
    `message.created` outbox row `created` (if any: `_created_row`) and its push job in one
    statement; or return the author's earlier message with this client_id. Sets
    `event_queued` and `push_queued` on `message`: what `_message_created` need not queue."""
    params = send_sql.params(
        chat_id=message.chat_id, author_id=message.author_id, now=message.created_at, device=device,
        type=message.type, content=message.content, reply_to=message.reply_to_id,
        client_id=message.client_id, mentions=json.dumps(message.mentions),
        **send_sql.row_params(created), push_kind=push.queued_kind(PUSH_KIND),
    )
    # Prepared: PostgreSQL plans this statement once per connection (chatserver.prepared).
    with prepared_cursor() as cursor:
        cursor.execute(send_sql.SEND, params)
        row = cursor.fetchone()
    if row is None:
        # Nothing written: a signed-out device (refused before anything else), a known
        # client_id (answered first, even if the author may no longer post, as on the ORM
        # path), or the author may not post.
        device_confirm(device, read_anyway=True)
        sent = _message_sent_before(chat_id=message.chat_id, author_id=message.author_id, client_id=message.client_id)
        if sent is not None:
            return sent
        _refuse_post(chat_id=message.chat_id, author_id=message.author_id)
    message.id, message.seq, message.version, current, message.member_ids, queued = row
    message.event_queued, message.push_queued = queued is not None, True
    if message.invite is not None or message.forwarded:
        # Columns of typed messages, which the send's statement leaves to their defaults.
        Message.objects.filter(id=message.id).update(
            invite=message.invite, forwarded=message.forwarded, forwarded_from=message.forwarded_from_id
        )
    if not current:
        # Another change to the chat committed while this statement waited for the lock
        # (a concurrent send, a kick...): check again. Raising rolls the write back.
        with prepared_cursor() as cursor:
            cursor.execute(send_sql.RECHECK, params)
            may_post, member_ids = cursor.fetchone()
        if not may_post:
            device_confirm(device, read_anyway=True)
            _refuse_post(chat_id=message.chat_id, author_id=message.author_id)
        if sorted(member_ids) != sorted(message.member_ids):
            # Its event went to the members of the statement's snapshot: queued again.
            message.member_ids = member_ids
            if message.event_queued:
                outbox.unqueue(queued)
                message.event_queued = False
    return None


def _created_row(message: Message, original: Message | None) -> outbox.RowTemplate | None:
    """The `message.created` row for the write statement to queue, or None if it cannot
    (`chat_event_row`): the event `_message_created` would queue, with the numbers only
    the write knows (the message's id, seq, version and unread count) in slots."""
    draft = copy.copy(message)  # its own related-objects cache (Model.__getstate__)
    draft.id, draft.seq = outbox.slot(send_sql.SLOT_ID), outbox.slot(send_sql.SLOT_SEQ)
    draft.version, draft.unread_count = outbox.slot(send_sql.SLOT_VERSION), outbox.slot(send_sql.SLOT_UNREAD)
    draft.reply_original = original
    Message.attachment.related.set_cached_value(draft, None)  # none: no query for it
    return chat_event_row(
        chat=message.chat_id, type=EventType.MESSAGE_CREATED, data=shapes.message_output(draft),
        version=draft.version, slots=send_sql.SLOTS,
    )


def _insert_orm(message: Message, device: Device | None) -> Message | None:
    """The same as `_insert_one_statement`, for databases without data-modifying CTEs."""
    sent = _message_sent_before(chat_id=message.chat_id, author_id=message.author_id, client_id=message.client_id)
    if sent is not None:
        device_confirm(device, read_anyway=True)
        return sent
    params = send_sql.params(chat_id=message.chat_id, author_id=message.author_id, now=message.created_at,
                             device=device)
    with connection.cursor() as cursor:
        cursor.execute(send_sql.SEQ_BUMP, params)
        row = cursor.fetchone()
    if row is None:
        device_confirm(device, read_anyway=True)
        _refuse_post(chat_id=message.chat_id, author_id=message.author_id)
    message.seq, message.version = row
    message.member_ids = list(Membership.objects.filter(chat_id=message.chat_id).values_list("user_id", flat=True))
    message.save(force_insert=True)
    Membership.objects.filter(chat_id=message.chat_id, user_id=message.author_id).update(
        last_read_seq=message.seq, last_read_message_id=message.id,
        last_delivered_seq=message.seq, last_delivered_message_id=message.id,
    )
    message.event_queued = message.push_queued = False
    return None


def _refuse_post(*, chat_id: int, author_id: int) -> NoReturn:
    """Why the author may not post: not a member (404, as for a chat that does not
    exist), restricted, or a block in a direct chat."""
    role = Membership.objects.filter(chat_id=chat_id, user_id=author_id).values_list("role", flat=True).first()
    if role is None:
        raise ChatNotFound()
    if role == Role.RESTRICTED:
        raise CannotPost()
    raise BlockedError("You cannot message this user.")


def _message_created(*, message: Message, attachment: Attachment | None, original: Message | None) -> None:
    """Store the written message's attachment and mentions and queue `message.created` to
    the members, and its push job, unless the write did (`event_queued`, `push_queued`)."""
    mentions_store(message)
    if attachment is not None:
        attachment.message = message
        attachment.save()
    # Known now: reading message.attachment below must not query.
    Message.attachment.related.set_cached_value(message, attachment)
    # Nobody else can have read a message that did not exist.
    message.unread_count = len(message.member_ids) - 1
    message.reply_original = original
    if not message.event_queued:
        # The write statement took the version under the chat's lock.
        chat_event(
            chat=message.chat_id,
            type=EventType.MESSAGE_CREATED,
            data=shapes.message_output(message),
            user_ids=message.member_ids,
            version=message.version,
        )
    if not message.push_queued:
        # The members' devices without a live connection are woken (chats/push.py; the
        # write statement queues the same job: `send_sql.SEND`).
        push.enqueue(kind=PUSH_KIND, data={"message_id": message.id})
    # Its first link, if any, is previewed by the `previews` worker (no query without one).
    preview_queue(message)


def _type_of(attachment: Attachment | None) -> str:
    if attachment is None:
        return Message.Type.TEXT
    return {"image": "image", "audio": "audio", "video": "video"}.get(attachment.mime.split("/")[0], "file")


def _message_sent_before(*, chat_id: int, author_id: int, client_id: str | None) -> Message | None:
    """The author's message with this client_id in the chat, if any (annotated)."""
    if not client_id:
        return None
    existing = (
        Message.objects.filter(chat_id=chat_id, author_id=author_id, client_id=client_id)
        .select_related(*MESSAGE_RELATED)
        .first()
    )
    return None if existing is None else messages_annotate(chat_id=chat_id, messages=[existing])[0]
