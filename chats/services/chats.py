"""Writes about chats themselves: create, rename, delete (or hide, for a direct chat)."""

from django.db import IntegrityError, transaction

from accounts.errors import BlockedError
from accounts.models import Block, User
from accounts.social import blocked_between
from chats import media, shapes
from chats.errors import NotAGroup, NotAllowed
from chats.models import Attachment, Chat, Membership
from chats.selectors import chat_members
from chats.services.common import RANK, Role, chat_event, lock_chat, member_ids, membership_locked
from chatserver import outbox, push
from chatserver.broker_access import ChatAdd, ChatRemove, MemberGrant
from chatserver.errors import InvalidInput
from chatserver.events import EventType


def chat_create(*, actor, member_ids: list[int], name: str = "") -> tuple[Chat, bool]:
    """Create a chat; return (chat, created).

    One other member and no name: the pair's direct chat, created once, also when two
    requests race (the unique `direct_key` decides; the loser returns the winner's chat).
    Otherwise a group whose owner is the actor. Members get `chat.created` on their user
    topics, and may subscribe to the chat's topic by the time this returns (broker up).
    """
    others = sorted(set(member_ids) - {actor.id})
    if not others:
        raise InvalidInput("members", "Name at least one user besides yourself.")
    found = set(User.objects.filter(id__in=others, is_active=True).values_list("id", flat=True))
    missing = [uid for uid in others if uid not in found]
    if missing:
        raise InvalidInput("members", f"Unknown users: {', '.join(map(str, missing))}.")

    if len(others) == 1 and not name:
        if blocked_between(actor.id, others[0]):
            raise BlockedError()
        low, high = sorted([actor.id, others[0]])
        key = f"{low}:{high}"
        existing = Chat.objects.filter(direct_key=key).first()
        if existing is not None:
            # Asking for a direct chat one had hidden brings it back.
            Membership.objects.filter(chat=existing, user=actor).update(hidden_at_seq=None)
            return existing, False
        try:
            with transaction.atomic():
                chat = Chat.objects.create(kind=Chat.Kind.DIRECT, direct_key=key)
                roles = {actor.id: Role.MEMBER, others[0]: Role.MEMBER}
                event = _chat_populate(chat=chat, roles=roles)
        except IntegrityError:
            return Chat.objects.get(direct_key=key), False
    else:
        if Block.objects.filter(user_id__in=others, blocked_id=actor.id).exists():
            raise BlockedError("You cannot add one of these users.")
        with transaction.atomic():
            chat = Chat.objects.create(kind=Chat.Kind.GROUP, name=name)
            roles = {actor.id: Role.OWNER, **{uid: Role.MEMBER for uid in others}}
            event = _chat_populate(chat=chat, roles=roles)
            push.enqueue(kind="invitation", data={"chat_id": chat.id, "user_ids": others, "by": actor.id})
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
        data=shapes.chat_data(chat, members),
        user_ids=list(roles),
        access=access,
    )


def chat_destroy(chat: Chat) -> None:
    """Delete a chat with its history; its files go once the deletion is committed."""
    names = [n for pair in Attachment.objects.filter(message__chat=chat).values_list("file", "thumbnail") for n in pair]
    chat.delete()
    if names:
        transaction.on_commit(lambda: media.discard_unreferenced(*names))


def chat_rename(*, chat_id: int, actor: User, name: str) -> Chat:
    """Rename a group (admin or owner); members get `chat.updated`."""
    with transaction.atomic():
        chat = lock_chat(chat_id)
        actor_member = membership_locked(chat=chat, user_id=actor.id)
        if chat.kind != Chat.Kind.GROUP:
            raise NotAGroup("Direct chats have no name.")
        if RANK[actor_member.role] < RANK[Role.ADMIN]:
            raise NotAllowed()
        chat.name = name
        chat.save(update_fields=["name"])
        members = chat_members(chat_id=chat.id)
        chat_event(
            chat=chat,
            type=EventType.CHAT_UPDATED,
            data=shapes.chat_data(chat, members),
            user_ids=[m.user_id for m in members],
        )
    return chat


def chat_delete(*, chat_id: int, actor: User) -> None:
    """Delete a group with its history (owner only): members get `chat.deleted` and the
    chat's topic is closed on the broker. For a direct chat, hide it from the caller's
    list only, like mobile messengers: it comes back with the next message, and the
    pair's chat stays the same one (the caller's other devices get `chat.deleted`)."""
    with transaction.atomic():
        chat = lock_chat(chat_id)
        actor_member = membership_locked(chat=chat, user_id=actor.id)
        if chat.kind == Chat.Kind.DIRECT:
            actor_member.hidden_at_seq = chat.last_seq
            actor_member.save(update_fields=["hidden_at_seq"])
            chat_event(
                chat=chat,
                type=EventType.CHAT_DELETED,
                data={"id": chat.id, "hidden": True},
                user_ids=[actor.id],
                to_chat_topic=False,
            )
            return
        if actor_member.role != Role.OWNER:
            raise NotAllowed("Only the owner can delete the chat.")
        user_ids = member_ids(chat.id)
        chat_event(
            chat=chat,
            type=EventType.CHAT_DELETED,
            data={"id": chat.id},
            user_ids=user_ids,
            access=[ChatRemove(chat=chat.id)],
        )
        chat_destroy(chat)
