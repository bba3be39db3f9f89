"""Writes about a group's members: add, remove (leave or kick), change roles."""

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from accounts.errors import BlockedError, UserNotFound
from accounts.models import Block, User
from chats import shapes
from chats.errors import ChatNotFound, NotAGroup, NotAllowed
from chats.models import Chat, Membership
from chats.selectors import chat_members
from chats.services.chats import chat_destroy
from chats.services.common import RANK, Role, chat_event, lock_chat, member_ids, membership_locked
from chats.services.pins import list_updated_enqueue
from chatserver import outbox, push
from chatserver.broker_access import ChatRemove, MemberGrant, MemberRevoke
from chatserver.events import Event, EventType


def member_add(*, chat_id: int, actor: User, user_id: int) -> tuple[Membership, bool]:
    """Add a user to a group (admin or owner); return (membership, created).

    The new member's pointer starts at the newest message, so older ones never count as
    unread for it. It may subscribe to the chat's topic once `member.added` reaches it
    (and, broker up, by the time this returns). Adding a member again changes nothing.
    """
    with transaction.atomic():
        chat = lock_chat(chat_id)
        actor_member = membership_locked(chat=chat, user_id=actor.id)
        if chat.kind != Chat.Kind.GROUP:
            raise NotAGroup()
        if RANK[actor_member.role] < RANK[Role.ADMIN]:
            raise NotAllowed()
        user = User.objects.filter(id=user_id, is_active=True).first()
        if user is None:
            raise UserNotFound()
        if Block.objects.filter(user=user, blocked_id=actor.id).exists():
            raise BlockedError()
        existing = Membership.objects.select_related("user").filter(chat=chat, user=user).first()
        if existing is not None:
            return existing, False
        membership = Membership.objects.create(
            chat=chat, user=user, joined_seq=chat.last_seq, last_read_seq=chat.last_seq
        )
        user_ids = member_ids(chat.id)
        event = chat_event(
            chat=chat,
            type=EventType.MEMBER_ADDED,
            data={"member": shapes.member_data(membership), "by": actor.id},
            user_ids=user_ids,
            access=[MemberGrant(chat=chat.id, user=user.id)],
        )
        push.enqueue(kind="invitation", data={"chat_id": chat.id, "user_ids": [user.id], "by": actor.id})
    outbox.wait_applied([event])
    return membership, True


def member_remove(*, chat_id: int, actor: User, user_id: int) -> None:
    """Leave (user_id is the actor) or kick (the actor outranks the user: an admin over
    members and restricted ones, the owner over anyone).

    The removed user's broker access to the chat is revoked before anything published
    after this, so it receives nothing more from the chat, also if it was offline. When
    the owner leaves, the longest-standing admin (else member, else restricted member)
    becomes owner. A group whose last member leaves is deleted.
    """
    with transaction.atomic():
        chat = lock_chat(chat_id)
        actor_member = membership_locked(chat=chat, user_id=actor.id)
        if user_id == actor.id:
            target = actor_member
        else:
            if chat.kind != Chat.Kind.GROUP:
                raise NotAGroup()
            target = Membership.objects.select_related("user").filter(chat=chat, user_id=user_id).first()
            if target is None:
                raise UserNotFound("This user is not a member of the chat.")
            if RANK[actor_member.role] < RANK[Role.ADMIN] or RANK[actor_member.role] <= RANK[target.role]:
                raise NotAllowed()
        if chat.kind == Chat.Kind.DIRECT:
            raise NotAGroup("You cannot leave a direct chat.")
        target.delete()
        remaining = chat_members(chat_id=chat.id)
        revoke = MemberRevoke(chat=chat.id, user=user_id)
        if not remaining:
            outbox.enqueue(access=[revoke, ChatRemove(chat=chat.id)])
            chat_destroy(chat)
            return
        event = chat_event(
            chat=chat,
            type=EventType.MEMBER_REMOVED,
            data={"member": {"id": user_id, "username": target.user.username}, "by": actor.id},
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
        data={"member": shapes.member_data(heir), "by": None},
        user_ids=[m.user_id for m in remaining],
    )


def member_set_role(*, chat_id: int, actor: User, user_id: int, role: str) -> Membership:
    """Change a member's role. The owner may give any role; making someone owner hands
    ownership over (the old owner becomes admin). An admin may only move members between
    `member` and `restricted`. Members get `member.updated`."""
    with transaction.atomic():
        chat = lock_chat(chat_id)
        actor_member = membership_locked(chat=chat, user_id=actor.id)
        if chat.kind != Chat.Kind.GROUP:
            raise NotAGroup()
        target = Membership.objects.select_related("user").filter(chat=chat, user_id=user_id).first()
        if target is None:
            raise UserNotFound("This user is not a member of the chat.")
        if target.id == actor_member.id:
            raise NotAllowed("You cannot change your own role.")
        if actor_member.role == Role.OWNER:
            pass
        elif actor_member.role == Role.ADMIN:
            lower = {Role.MEMBER, Role.RESTRICTED}
            if target.role not in lower or role not in lower:
                raise NotAllowed("Admins may only switch members between member and restricted.")
        else:
            raise NotAllowed()
        changed = [target]
        if role == Role.OWNER:
            actor_member.role = Role.ADMIN
            actor_member.save(update_fields=["role"])
            changed.append(actor_member)
        target.role = role
        target.save(update_fields=["role"])
        user_ids = member_ids(chat.id)
        for membership in changed:
            chat_event(
                chat=chat,
                type=EventType.MEMBER_UPDATED,
                data={"member": shapes.member_data(membership), "by": actor.id},
                user_ids=user_ids,
            )
    return target


def member_mute(*, chat_id: int, actor: User, until: datetime | None) -> Membership:
    """Mute the chat's pushes for the actor until `until` (`MUTED_FOREVER`: for good;
    None: unmute). Only pushes stop: MQTT delivery and unread counts go on. Nobody else
    is told or can see it: `mute.updated` goes to the actor's own devices only (its
    other phone shows the chat muted too)."""
    with transaction.atomic():
        membership = Membership.objects.select_related("user", "chat").filter(chat_id=chat_id, user_id=actor.id).first()
        if membership is None:
            raise ChatNotFound()
        if membership.muted_until != until:
            now = timezone.now()
            listed = shapes.list_data(membership, now=now)
            if not listed["archived"] and membership.archived_at_seq is not None:
                # Archived once, and brought back by a message since: muting it now must
                # not archive it again (a muted archived chat stays archived).
                membership.archived_at_seq = None
            membership.muted_until = until
            membership.save(update_fields=["muted_until", "archived_at_seq"])
            outbox.enqueue(
                event=Event(
                    type=EventType.MUTE_UPDATED,
                    data={"chat": chat_id, **shapes.mute_data(membership, now=now)},
                ),
                user_ids=[actor.id],
            )
            if shapes.list_data(membership, now=now) != listed:
                # Unmuting an archived chat that got messages meanwhile brings it back.
                list_updated_enqueue(membership)
    return membership
