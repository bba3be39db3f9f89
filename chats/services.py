"""Writes about chats, members and messages.

Every change to a chat locks the chat's row first (`_lock_chat`, or the seq bump in
`message_send`), then writes its rows and its outbox row in the same transaction. Hence:
seqs have no gap and no duplicate, outbox rows of one chat are in commit order (the
relay keeps per-chat order), and a membership check cannot race a kick.
"""

from typing import NoReturn

from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from accounts.models import Block
from accounts.selectors import UserNotFound
from accounts.social import BlockedError, blocked_between
from chats import events, media
from chats.models import Attachment, Chat, Membership, Message
from chats.selectors import ChatNotFound, MessageNotFound, chat_members, messages_data
from chatserver import outbox
from chatserver.broker_access import ChatAdd, ChatRemove, MemberGrant, MemberRevoke
from chatserver.events import Event, EventType
from chatserver.errors import ApplicationError, PermissionDenied

User = get_user_model()
Role = Membership.Role

# Who outranks whom; an actor acts only on members it outranks (or on itself).
RANK = {Role.OWNER: 3, Role.ADMIN: 2, Role.MEMBER: 1, Role.RESTRICTED: 0}


class InvalidInput(ApplicationError):
    code = "validation_error"
    message = "Invalid input."

    def __init__(self, field: str, message: str) -> None:
        super().__init__(fields={field: [message]})


class CannotPost(PermissionDenied):
    code = "cannot_post"
    message = "Restricted members cannot post in this chat."


class NotAllowed(PermissionDenied):
    code = "not_allowed"
    message = "Your role in this chat does not allow this."


class NotAGroup(ApplicationError):
    code = "not_a_group"
    message = "Direct chats always have exactly their two members."


def _lock_chat(chat_id: int) -> Chat:
    chat = Chat.objects.select_for_update().filter(id=chat_id).first()
    if chat is None:
        raise ChatNotFound()
    return chat


def _membership_locked(*, chat: Chat, user_id: int) -> Membership:
    """A membership re-read under the chat's lock (roles may have changed meanwhile)."""
    membership = Membership.objects.select_related("user").filter(chat=chat, user_id=user_id).first()
    if membership is None:
        raise ChatNotFound()
    return membership


# Chat events that leave the chat's version alone, and why. Every other chat event is a
# change that /chats/sync/ must be able to replay, so it takes the chat's next version.
UNVERSIONED: dict[EventType, str] = {
    EventType.READ_UPDATED: (
        "pointers move many times per message and without the chat's lock; /chats/sync/ "
        "answers the members' current pointers instead of replaying each move"
    ),
}
# The same for one variant of an event type, named by a flag set in its data.
UNVERSIONED_WHEN: dict[tuple[EventType, str], str] = {
    (EventType.CHAT_DELETED, "hidden"): (
        "hiding a direct chat changes it for the hider's own list only; the other member "
        "must not see a change, so only the hider's devices are told"
    ),
}


def bumps_version(type: EventType, data: dict) -> bool:
    """Whether an event of this type, with this data, is a change of its chat's version."""
    if type in UNVERSIONED:
        return False
    return not any(data.get(flag) for (t, flag) in UNVERSIONED_WHEN if t == type)


def _chat_changed(chat: Chat) -> int:
    """Bump the chat's version (the caller holds the chat's row lock: no gap)."""
    chat.version += 1
    Chat.objects.filter(id=chat.id).update(version=chat.version)
    return chat.version


def chat_event(
    *,
    chat: Chat | int,
    type: EventType,
    data: dict,
    user_ids,
    access=(),
    to_chat_topic: bool = True,
    version: int | None = None,
) -> outbox.OutboxEvent:
    """Queue a chat event: the one way a chat event enters the outbox.

    Events that change the chat (`bumps_version`) take its next version, under the chat's
    row lock the caller holds; pass `version` only when the write itself already took it
    (the message send statement). The others carry none.
    """
    chat_id = chat if isinstance(chat, int) else chat.id
    if bumps_version(type, data):
        if version is None:
            version = _chat_changed(chat)
    elif version is not None:
        raise outbox.InvalidOutboxRow(f"{type} does not change the chat's version")
    return outbox.enqueue(
        event=Event(type=type, data=data, chat=chat_id, version=version),
        user_ids=user_ids,
        chat_topic=chat_id if to_chat_topic else None,
        access=access,
    )


# --- Chats ------------------------------------------------------------------------------


def chat_create(*, creator, member_ids: list[int], name: str = "") -> tuple[Chat, bool]:
    """Create a chat; return (chat, created).

    One other member and no name: the pair's direct chat, created once, also when two
    requests race (the unique `direct_key` decides; the loser returns the winner's chat).
    Otherwise a group whose owner is the creator. Members get `chat.created` on their user
    topics, and may subscribe to the chat's topic by the time this returns (broker up).
    """
    others = sorted(set(member_ids) - {creator.id})
    if not others:
        raise InvalidInput("members", "Name at least one user besides yourself.")
    found = set(User.objects.filter(id__in=others, is_active=True).values_list("id", flat=True))
    missing = [uid for uid in others if uid not in found]
    if missing:
        raise InvalidInput("members", f"Unknown users: {', '.join(map(str, missing))}.")

    if len(others) == 1 and not name:
        if blocked_between(creator.id, others[0]):
            raise BlockedError()
        low, high = sorted([creator.id, others[0]])
        key = f"{low}:{high}"
        existing = Chat.objects.filter(direct_key=key).first()
        if existing is not None:
            # Asking for a direct chat one had hidden brings it back.
            Membership.objects.filter(chat=existing, user=creator).update(hidden_at_seq=None)
            return existing, False
        try:
            with transaction.atomic():
                chat = Chat.objects.create(kind=Chat.Kind.DIRECT, direct_key=key)
                roles = {creator.id: Role.MEMBER, others[0]: Role.MEMBER}
                event = _chat_populate(chat=chat, roles=roles)
        except IntegrityError:
            return Chat.objects.get(direct_key=key), False
    else:
        if Block.objects.filter(user_id__in=others, blocked_id=creator.id).exists():
            raise BlockedError("You cannot add one of these users.")
        with transaction.atomic():
            chat = Chat.objects.create(kind=Chat.Kind.GROUP, name=name)
            roles = {creator.id: Role.OWNER, **{uid: Role.MEMBER for uid in others}}
            event = _chat_populate(chat=chat, roles=roles)
    outbox.wait_applied([event])
    return chat, True


def _chat_populate(*, chat: Chat, roles: dict[int, str]) -> outbox.OutboxEvent:
    Membership.objects.bulk_create(
        [Membership(chat=chat, user_id=uid, role=role) for uid, role in roles.items()]
    )
    members = chat_members(chat_id=chat.id)
    access = [ChatAdd(chat=chat.id), *(MemberGrant(chat=chat.id, user=uid) for uid in roles)]
    return chat_event(
        chat=chat,
        type=EventType.CHAT_CREATED,
        data=events.chat_data(chat, members),
        user_ids=list(roles),
        access=access,
    )


def _chat_destroy(chat: Chat) -> None:
    """Delete a chat with its history; its files go once the deletion is committed."""
    names = [n for pair in Attachment.objects.filter(message__chat=chat).values_list("file", "thumbnail") for n in pair]
    chat.delete()
    if names:
        transaction.on_commit(lambda: media.discard(*names))


def chat_rename(*, chat_id: int, actor_id: int, name: str) -> Chat:
    """Rename a group (admin or owner); members get `chat.updated`."""
    with transaction.atomic():
        chat = _lock_chat(chat_id)
        actor = _membership_locked(chat=chat, user_id=actor_id)
        if chat.kind != Chat.Kind.GROUP:
            raise NotAGroup("Direct chats have no name.")
        if RANK[actor.role] < RANK[Role.ADMIN]:
            raise NotAllowed()
        chat.name = name
        chat.save(update_fields=["name"])
        members = chat_members(chat_id=chat.id)
        chat_event(
            chat=chat,
            type=EventType.CHAT_UPDATED,
            data=events.chat_data(chat, members),
            user_ids=[m.user_id for m in members],
        )
    return chat


def chat_delete(*, chat_id: int, actor_id: int) -> None:
    """Delete a group with its history (owner only): members get `chat.deleted` and the
    chat's topic is closed on the broker. For a direct chat, hide it from the caller's
    list only, like mobile messengers: it comes back with the next message, and the
    pair's chat stays the same one (the caller's other devices get `chat.deleted`)."""
    with transaction.atomic():
        chat = _lock_chat(chat_id)
        actor = _membership_locked(chat=chat, user_id=actor_id)
        if chat.kind == Chat.Kind.DIRECT:
            actor.hidden_at_seq = chat.last_seq
            actor.save(update_fields=["hidden_at_seq"])
            chat_event(
                chat=chat,
                type=EventType.CHAT_DELETED,
                data={"id": chat.id, "hidden": True},
                user_ids=[actor_id],
                to_chat_topic=False,
            )
            return
        if actor.role != Role.OWNER:
            raise NotAllowed("Only the owner can delete the chat.")
        user_ids = list(Membership.objects.filter(chat=chat).values_list("user_id", flat=True))
        chat_event(
            chat=chat,
            type=EventType.CHAT_DELETED,
            data={"id": chat.id},
            user_ids=user_ids,
            access=[ChatRemove(chat=chat.id)],
        )
        _chat_destroy(chat)


# --- Members ----------------------------------------------------------------------------


def member_add(*, chat_id: int, actor_id: int, user_id: int) -> tuple[Membership, bool]:
    """Add a user to a group (admin or owner); return (membership, created).

    The new member's pointer starts at the newest message, so older ones never count as
    unread for it. It may subscribe to the chat's topic once `member.added` reaches it
    (and, broker up, by the time this returns). Adding a member again changes nothing.
    """
    with transaction.atomic():
        chat = _lock_chat(chat_id)
        actor = _membership_locked(chat=chat, user_id=actor_id)
        if chat.kind != Chat.Kind.GROUP:
            raise NotAGroup()
        if RANK[actor.role] < RANK[Role.ADMIN]:
            raise NotAllowed()
        user = User.objects.filter(id=user_id, is_active=True).first()
        if user is None:
            raise UserNotFound()
        if Block.objects.filter(user=user, blocked_id=actor_id).exists():
            raise BlockedError()
        existing = Membership.objects.select_related("user").filter(chat=chat, user=user).first()
        if existing is not None:
            return existing, False
        membership = Membership.objects.create(
            chat=chat, user=user, joined_seq=chat.last_seq, last_read_seq=chat.last_seq
        )
        user_ids = list(Membership.objects.filter(chat=chat).values_list("user_id", flat=True))
        event = chat_event(
            chat=chat,
            type=EventType.MEMBER_ADDED,
            data={"member": events.member_data(membership), "by": actor_id},
            user_ids=user_ids,
            access=[MemberGrant(chat=chat.id, user=user.id)],
        )
    outbox.wait_applied([event])
    return membership, True


def member_remove(*, chat_id: int, actor_id: int, user_id: int) -> None:
    """Leave (user_id is the actor) or kick (the actor outranks the user: an admin over
    members and restricted ones, the owner over anyone).

    The removed user's broker access to the chat is revoked before anything published
    after this, so it receives nothing more from the chat, also if it was offline. When
    the owner leaves, the longest-standing admin (else member, else restricted member)
    becomes owner. A group whose last member leaves is deleted.
    """
    with transaction.atomic():
        chat = _lock_chat(chat_id)
        actor = _membership_locked(chat=chat, user_id=actor_id)
        if user_id == actor_id:
            target = actor
        else:
            if chat.kind != Chat.Kind.GROUP:
                raise NotAGroup()
            target = Membership.objects.select_related("user").filter(chat=chat, user_id=user_id).first()
            if target is None:
                raise UserNotFound("This user is not a member of the chat.")
            if RANK[actor.role] < RANK[Role.ADMIN] or RANK[actor.role] <= RANK[target.role]:
                raise NotAllowed()
        if chat.kind == Chat.Kind.DIRECT:
            raise NotAGroup("You cannot leave a direct chat.")
        target.delete()
        remaining = chat_members(chat_id=chat.id)
        revoke = MemberRevoke(chat=chat.id, user=user_id)
        if not remaining:
            outbox.enqueue(access=[revoke, ChatRemove(chat=chat.id)])
            _chat_destroy(chat)
            return
        event = chat_event(
            chat=chat,
            type=EventType.MEMBER_REMOVED,
            data={"member": {"id": user_id, "username": target.user.username}, "by": actor_id},
            user_ids=[m.user_id for m in remaining] + [user_id],
            access=[revoke],
        )
        if target.role == Role.OWNER:
            _ownership_pass(chat=chat, remaining=remaining)
    outbox.wait_applied([event])


def _ownership_pass(*, chat: Chat, remaining: list[Membership]) -> None:
    heir = min(remaining, key=lambda m: (-RANK[m.role], m.joined_at, m.id))
    heir.role = Role.OWNER
    heir.save(update_fields=["role"])
    chat_event(
        chat=chat,
        type=EventType.MEMBER_UPDATED,
        data={"member": events.member_data(heir), "by": None},
        user_ids=[m.user_id for m in remaining],
    )


def member_set_role(*, chat_id: int, actor_id: int, user_id: int, role: str) -> Membership:
    """Change a member's role. The owner may give any role; making someone owner hands
    ownership over (the old owner becomes admin). An admin may only move members between
    `member` and `restricted`. Members get `member.updated`."""
    with transaction.atomic():
        chat = _lock_chat(chat_id)
        actor = _membership_locked(chat=chat, user_id=actor_id)
        if chat.kind != Chat.Kind.GROUP:
            raise NotAGroup()
        target = Membership.objects.select_related("user").filter(chat=chat, user_id=user_id).first()
        if target is None:
            raise UserNotFound("This user is not a member of the chat.")
        if target.id == actor.id:
            raise NotAllowed("You cannot change your own role.")
        if actor.role == Role.OWNER:
            pass
        elif actor.role == Role.ADMIN:
            lower = {Role.MEMBER, Role.RESTRICTED}
            if target.role not in lower or role not in lower:
                raise NotAllowed("Admins may only switch members between member and restricted.")
        else:
            raise NotAllowed()
        changed = [target]
        if role == Role.OWNER:
            actor.role = Role.ADMIN
            actor.save(update_fields=["role"])
            changed.append(actor)
        target.role = role
        target.save(update_fields=["role"])
        user_ids = list(Membership.objects.filter(chat=chat).values_list("user_id", flat=True))
        for membership in changed:
            chat_event(
                chat=chat,
                type=EventType.MEMBER_UPDATED,
                data={"member": events.member_data(membership), "by": actor_id},
                user_ids=user_ids,
            )
    return target


# --- Messages ---------------------------------------------------------------------------

# Who may post, as a condition on the chat row being updated: a member that is not
# restricted, and in a direct chat neither side has blocked the other.
_MAY_POST_SQL = """
    EXISTS (
        SELECT 1 FROM chats_membership
        WHERE chat_id = %(chat)s AND user_id = %(author)s AND role <> 'restricted')
    AND (kind = 'group' OR NOT EXISTS (
        SELECT 1 FROM chats_membership other JOIN accounts_block b
          ON (b.user_id = other.user_id AND b.blocked_id = %(author)s)
          OR (b.user_id = %(author)s AND b.blocked_id = other.user_id)
        WHERE other.chat_id = %(chat)s AND other.user_id <> %(author)s))
"""

# The ORM path: takes the next seq and version (and the chat's row lock) only if the
# author may post. SQLite has UPDATE ... RETURNING but no data-modifying CTE.
_SEQ_BUMP_SQL = f"""
    UPDATE chats_chat SET last_seq = last_seq + 1, version = version + 1, activity_at = %(now)s
    WHERE id = %(chat)s AND {_MAY_POST_SQL}
    RETURNING last_seq, version
"""

# The PostgreSQL path: the whole write in one statement. `bump` takes the next seq and
# version (and the chat's row lock) only if the author may post and has not sent this
# client_id yet; `message` inserts the message with them; `pointer` moves the author's
# read and delivered pointers to it. It returns what the message object needs, the
# member ids, and whether its snapshot was current when it got the lock.
#
# All sub-statements read one snapshot, taken before the statement waits for the lock.
# Every change to a chat's members or roles bumps the chat's version under that lock, so
# when the version grew by our own bump only, the memberships read are those the lock
# protects. Otherwise a send or a member change committed while this one waited: the
# checks and member ids are read again (`_RECHECK_SQL`), under the lock.
_SEND_SQL = f"""
    WITH seen AS (
        SELECT version FROM chats_chat WHERE id = %(chat)s
    ), bump AS (
        UPDATE chats_chat SET last_seq = last_seq + 1, version = version + 1, activity_at = %(now)s
        WHERE id = %(chat)s AND {_MAY_POST_SQL}
          AND NOT EXISTS (
            SELECT 1 FROM chats_message
            WHERE chat_id = %(chat)s AND author_id = %(author)s AND client_id = %(client_id)s)
        RETURNING last_seq, version
    ), message AS (
        INSERT INTO chats_message
            (chat_id, seq, author_id, type, content, reply_to_id, client_id, created_at, deleted, version)
        SELECT %(chat)s, last_seq, %(author)s, %(type)s, %(content)s, %(reply_to)s, %(client_id)s,
               %(now)s, false, version
        FROM bump
        RETURNING id, seq, version
    ), pointer AS (
        UPDATE chats_membership
        SET last_read_seq = message.seq, last_read_message_id = message.id,
            last_delivered_seq = message.seq, last_delivered_message_id = message.id
        FROM message
        WHERE chats_membership.chat_id = %(chat)s AND chats_membership.user_id = %(author)s
    )
    SELECT message.id, message.seq, message.version, message.version = seen.version + 1,
           ARRAY(SELECT user_id FROM chats_membership WHERE chat_id = %(chat)s)
    FROM message, seen
"""

# Under the chat's lock, in a new statement (hence a new snapshot): may the author still
# post, and who are the members now.
_RECHECK_SQL = f"""
    SELECT {_MAY_POST_SQL}, ARRAY(SELECT user_id FROM chats_membership WHERE chat_id = %(chat)s)
    FROM chats_chat WHERE id = %(chat)s
"""


def message_send(
    *,
    chat_id: int,
    author_id: int,
    content: str,
    reply_to_id: int | None = None,
    client_id: str | None = None,
    upload=None,
) -> tuple[dict, bool]:
    """Store a message (with its file, if any) and queue its event atomically; return
    (message object, created).

    The check that the author may post and the taking of the next seq are one statement
    under the chat's row lock, so concurrent senders get 1, 2, 3... and a kick or a block
    cannot slip in between the check and the write. The same (author, client_id) again
    returns the first message (created=False) and writes nothing, not even the file, also
    when the two requests race. The author's read and delivered pointers move to the new
    message. Members get `message.created` on their user topics and the chat's topic,
    carrying the very object returned here.

    On PostgreSQL the message, the seq and the pointers are written by one statement
    (`_SEND_SQL`), the outbox row by a second; elsewhere (SQLite) through the ORM. Both
    keep the guarantees above.

    A file is classified and stored before the transaction (outside the chat's lock);
    if anything fails afterwards it is deleted again: no orphan file.
    """
    if upload is not None:
        # A retry must not even store its file: look before storing it. (The write looks
        # for itself, under the chat's lock.)
        sent = _message_sent_before(chat_id=chat_id, author_id=author_id, client_id=client_id)
        if sent is not None:
            return sent, False
    if (reply_to_id is not None or upload is not None) and not Membership.objects.filter(
        chat_id=chat_id, user_id=author_id
    ).exists():
        # Before looking up the replied message (no oracle for outsiders) or storing a
        # file; a plain message is checked by the write itself.
        raise ChatNotFound()
    original = None
    if reply_to_id is not None:
        original = Message.objects.filter(id=reply_to_id, chat_id=chat_id).first()
        if original is None:
            raise InvalidInput("reply_to", "No such message in this chat.")
    attachment, stored = None, ()
    if upload is not None:
        sniffed = media.sniff(upload)
        stored = media.store(chat_id=chat_id, upload=upload, sniffed=sniffed)
        attachment = Attachment(
            file=stored[0], thumbnail=stored[1], mime=sniffed.mime, size=upload.size,
            name=media.display_name(upload.name), width=sniffed.width, height=sniffed.height,
        )
    insert = _message_inserter()
    try:
        with transaction.atomic():
            data, created = insert(
                chat_id=chat_id, author_id=author_id, content=content,
                original=original, client_id=client_id, attachment=attachment,
            )
    except IntegrityError:
        # Most likely a concurrent request with the same client_id committed first.
        media.discard(*stored)
        sent = _message_sent_before(chat_id=chat_id, author_id=author_id, client_id=client_id)
        if sent is not None:
            return sent, False
        raise
    except BaseException:
        media.discard(*stored)
        raise
    if not created:
        media.discard(*stored)
    return data, created


def _message_inserter():
    """The write of `message_send` for this database: one statement on PostgreSQL, which
    has data-modifying CTEs; the ORM elsewhere (SQLite). Both take the same arguments and
    return (message object, created), created=False for a known client_id."""
    if connection.vendor == "postgresql":
        return _message_insert_one_statement
    return _message_insert_orm


def _message_insert_one_statement(
    *,
    chat_id: int,
    author_id: int,
    content: str,
    original: Message | None,
    client_id: str | None,
    attachment: Attachment | None,
) -> tuple[dict, bool]:
    now = timezone.now()
    message = Message(
        chat_id=chat_id, author_id=author_id, type=_type_of(attachment), content=content,
        reply_to=original, client_id=client_id or None, created_at=now,
    )
    params = {
        "chat": chat_id, "author": author_id, "now": now, "type": message.type, "content": content,
        "reply_to": message.reply_to_id, "client_id": message.client_id,
    }
    with connection.cursor() as cursor:
        cursor.execute(_SEND_SQL, params)
        row = cursor.fetchone()
    if row is None:
        # Nothing written: a known client_id (answered first, even if the author may no
        # longer post, as on the ORM path), or the author may not post.
        sent = _message_sent_before(chat_id=chat_id, author_id=author_id, client_id=client_id)
        if sent is not None:
            return sent, False
        _refuse_post(chat_id=chat_id, author_id=author_id)
    message.id, message.seq, message.version, current, member_ids = row
    if not current:
        # Another change to the chat committed while this statement waited for the lock
        # (a concurrent send, a kick...): check again. Raising rolls the write back.
        with connection.cursor() as cursor:
            cursor.execute(_RECHECK_SQL, params)
            may_post, member_ids = cursor.fetchone()
        if not may_post:
            _refuse_post(chat_id=chat_id, author_id=author_id)
    data = _message_created(message=message, attachment=attachment, original=original, member_ids=member_ids)
    return data, True


def _message_insert_orm(
    *,
    chat_id: int,
    author_id: int,
    content: str,
    original: Message | None,
    client_id: str | None,
    attachment: Attachment | None,
) -> tuple[dict, bool]:
    sent = _message_sent_before(chat_id=chat_id, author_id=author_id, client_id=client_id)
    if sent is not None:
        return sent, False
    now = timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(_SEQ_BUMP_SQL, {"now": now, "chat": chat_id, "author": author_id})
        row = cursor.fetchone()
    if row is None:
        _refuse_post(chat_id=chat_id, author_id=author_id)
    seq, version = row
    member_ids = list(Membership.objects.filter(chat_id=chat_id).values_list("user_id", flat=True))
    message = Message.objects.create(
        chat_id=chat_id,
        seq=seq,
        author_id=author_id,
        type=_type_of(attachment),
        content=content,
        reply_to=original,
        client_id=client_id or None,
        created_at=now,
        version=version,
    )
    Membership.objects.filter(chat_id=chat_id, user_id=author_id).update(
        last_read_seq=seq, last_read_message_id=message.id,
        last_delivered_seq=seq, last_delivered_message_id=message.id,
    )
    data = _message_created(message=message, attachment=attachment, original=original, member_ids=member_ids)
    return data, True


def _refuse_post(*, chat_id: int, author_id: int) -> NoReturn:
    """Why the author may not post: not a member (404, as for a chat that does not
    exist), restricted, or a block in a direct chat."""
    role = Membership.objects.filter(chat_id=chat_id, user_id=author_id).values_list("role", flat=True).first()
    if role is None:
        raise ChatNotFound()
    if role == Role.RESTRICTED:
        raise CannotPost()
    raise BlockedError("You cannot message this user.")


def _message_created(
    *, message: Message, attachment: Attachment | None, original: Message | None, member_ids: list[int]
) -> dict:
    """Store the written message's attachment and queue `message.created` to the members;
    return the message object."""
    if attachment is not None:
        attachment.message = message
        attachment.save()
    # Known now: reading message.attachment below must not query.
    Message.attachment.related.set_cached_value(message, attachment)
    # Nobody else can have read a message that did not exist.
    data = events.message_data(
        message, unread_count=len(member_ids) - 1, reply_preview=events.reply_preview(original)
    )
    # The write statement took the version under the chat's lock.
    chat_event(
        chat=message.chat_id,
        type=EventType.MESSAGE_CREATED,
        data=data,
        user_ids=member_ids,
        version=message.version,
    )
    return data


def _type_of(attachment: Attachment | None) -> str:
    if attachment is None:
        return Message.Type.TEXT
    return {"image": "image", "audio": "audio", "video": "video"}.get(attachment.mime.split("/")[0], "file")


def _message_sent_before(*, chat_id: int, author_id: int, client_id: str | None) -> dict | None:
    """The object of the author's message with this client_id in the chat, if any."""
    if not client_id:
        return None
    existing = (
        Message.objects.filter(chat_id=chat_id, author_id=author_id, client_id=client_id)
        .select_related("attachment")
        .first()
    )
    return None if existing is None else messages_data(chat_id=chat_id, messages=[existing])[0]


class NotAuthor(PermissionDenied):
    code = "not_author"
    message = "Only the author can edit a message."


class MessageDeleted(ApplicationError):
    status_code = 409
    code = "message_deleted"
    message = "This message was deleted."


def message_update(
    *, chat_id: int, actor_id: int, message_id: int, content: str | None = None, delete: bool = False
) -> dict:
    """Edit (the author only; sets `edited_at`) or soft-delete (the author, or an admin or
    the owner of a group) a message; return its object. Members get `message.updated`.

    A deleted message keeps its row, seq and place in history; its content is replaced
    by a fixed text, replies' previews follow, and it no longer counts as unread.
    Deleting again changes nothing; editing a deleted message is 409.
    """
    with transaction.atomic():
        chat = _lock_chat(chat_id)
        actor = _membership_locked(chat=chat, user_id=actor_id)
        message = Message.objects.filter(chat=chat, id=message_id).select_related("attachment").first()
        if message is None:
            raise MessageNotFound()
        if delete:
            may = message.author_id == actor_id or (
                chat.kind == Chat.Kind.GROUP and RANK[actor.role] >= RANK[Role.ADMIN]
            )
            if not may:
                raise NotAllowed("Only the author, or an admin of the group, can delete this message.")
            if message.deleted:
                return messages_data(chat_id=chat.id, messages=[message])[0]
            message.deleted = True
            message.content = events.DELETED_CONTENT
            _attachment_drop(message)
        else:
            if message.author_id != actor_id:
                raise NotAuthor()
            if message.deleted:
                raise MessageDeleted()
            message.content = content
            message.edited_at = timezone.now()
        message.version = _chat_changed(chat)
        message.save(update_fields=["content", "deleted", "edited_at", "version"])
        data = messages_data(chat_id=chat.id, messages=[message])[0]
        chat_event(
            chat=chat,
            type=EventType.MESSAGE_UPDATED,
            data=data,
            user_ids=Membership.objects.filter(chat=chat).values_list("user_id", flat=True),
            version=message.version,
        )
    return data


def _attachment_drop(message: Message) -> None:
    """Delete a message's attachment; its files go once that is committed."""
    attachment = events.attachment_or_none(message)
    if attachment is None:
        return
    names = (attachment.file, attachment.thumbnail)
    attachment.delete()
    Message.attachment.related.set_cached_value(message, None)
    transaction.on_commit(lambda: media.discard(*names))


def pointer_move(
    *, chat_id: int, user, message_id: int, read: bool
) -> Membership:
    """Move the caller's read (read=True) or delivered pointer forward to a message;
    never back. Reading implies delivery. Returns the membership.

    When it moved, the chat's members get `read.updated` (both pointers), unless the user
    turned read receipts off: then only its own devices are told (to sync unread counts).
    Not under the chat lock: a pointer can only name a message that is already
    committed, and pointers only grow, so concurrent moves need no order.
    """
    membership = Membership.objects.filter(chat_id=chat_id, user=user).first()
    if membership is None:
        raise ChatNotFound()
    message = Message.objects.filter(chat_id=chat_id, id=message_id).values("id", "seq").first()
    if message is None:
        raise MessageNotFound()
    seq, mid = message["seq"], message["id"]
    with transaction.atomic():
        changes = {"last_delivered_seq": seq, "last_delivered_message_id": mid}
        delivered = Membership.objects.filter(id=membership.id, last_delivered_seq__lt=seq).update(**changes)
        moved = 0
        if read:
            changes = {"last_read_seq": seq, "last_read_message_id": mid}
            moved = Membership.objects.filter(id=membership.id, last_read_seq__lt=seq).update(**changes)
        membership.refresh_from_db()
        if moved or delivered:
            data = {
                "user": user.id,
                "last_read_message_id": membership.last_read_message_id,
                "last_read_seq": membership.last_read_seq,
                "last_delivered_message_id": membership.last_delivered_message_id,
                "last_delivered_seq": membership.last_delivered_seq,
            }
            if user.read_receipts:
                recipients = list(Membership.objects.filter(chat_id=chat_id).values_list("user_id", flat=True))
            else:
                recipients = [user.id]
            chat_event(
                chat=chat_id,
                type=EventType.READ_UPDATED,
                data=data,
                user_ids=recipients,
                to_chat_topic=user.read_receipts,
            )
    return membership
