"""Writes about who talks to whom: friend requests, friendships, blocks.

Every change locks both users' rows, lower id first, so two requests crossing each other
(A asks B while B asks A) are serialized and become one friendship, and a block cannot
interleave with an accept. Each change tells the affected users on their topics.
"""

from django.db import transaction
from django.db.models import Q

from accounts.shapes import user_data
from accounts.models import Block, FriendRequest, Friendship, User
from accounts.errors import BlockedError, NotBlocked, NothingToRemove, SelfTarget, UserNotFound
from chatserver import outbox, push
from chatserver.events import Event, EventType





def _lock_pair(actor: User, other_id: int) -> User:
    """Lock both users (lower id first) and return the other one."""
    if other_id == actor.id:
        raise SelfTarget()
    locked = {u.id: u for u in User.objects.select_for_update().filter(id__in=[actor.id, other_id], is_active=True).order_by("id")}
    if other_id not in locked:
        raise UserNotFound()
    return locked[other_id]


def blocked_between(a_id: int, b_id: int) -> bool:
    return Block.objects.filter(Q(user_id=a_id, blocked_id=b_id) | Q(user_id=b_id, blocked_id=a_id)).exists()


def _tell(type: EventType, *, about: User, by: User, user_ids: list[int]) -> None:
    outbox.enqueue(event=Event(type=type, data={"user": user_data(about), "by": by.id}), user_ids=user_ids)


def friend_request_send(*, actor: User, target_id: int) -> tuple[str, bool]:
    """Ask `target_id` to be friends, or accept its pending request; return (status, changed).

    `status` is "requested" or "friends". Asking again changes nothing. Refused when
    either has blocked the other (the same answer both ways: it does not tell who).
    """
    with transaction.atomic():
        target = _lock_pair(actor, target_id)
        if blocked_between(actor.id, target.id):
            raise BlockedError()
        if Friendship.objects.filter(user=actor, friend=target).exists():
            return "friends", False
        incoming = FriendRequest.objects.filter(from_user=target, to_user=actor)
        if incoming.exists():
            incoming.delete()
            FriendRequest.objects.filter(from_user=actor, to_user=target).delete()
            Friendship.objects.bulk_create(
                [Friendship(user=actor, friend=target), Friendship(user=target, friend=actor)]
            )
            _tell(EventType.FRIEND_ACCEPTED, about=actor, by=actor, user_ids=[target.id])
            _tell(EventType.FRIEND_ACCEPTED, about=target, by=actor, user_ids=[actor.id])
            return "friends", True
        _, created = FriendRequest.objects.get_or_create(from_user=actor, to_user=target)
        if created:
            push.enqueue(kind="friend_request", data={"from_id": actor.id, "to_id": target.id})
            _tell(EventType.FRIEND_REQUESTED, about=actor, by=actor, user_ids=[target.id])
            _tell(EventType.FRIEND_REQUESTED, about=target, by=actor, user_ids=[actor.id])
        return "requested", created


def friend_remove(*, actor: User, target_id: int) -> None:
    """Unfriend, cancel one's request, or decline theirs; both are told `friend.removed`."""
    with transaction.atomic():
        target = _lock_pair(actor, target_id)
        removed = _unlink(actor, target)
        if not removed:
            raise NothingToRemove()
        _tell(EventType.FRIEND_REMOVED, about=actor, by=actor, user_ids=[target.id])
        _tell(EventType.FRIEND_REMOVED, about=target, by=actor, user_ids=[actor.id])


def _unlink(actor: User, target: User) -> int:
    """Delete any friendship and request between the two; return how many rows went."""
    pair = Q(user=actor, friend=target) | Q(user=target, friend=actor)
    requests = Q(from_user=actor, to_user=target) | Q(from_user=target, to_user=actor)
    return Friendship.objects.filter(pair).delete()[0] + FriendRequest.objects.filter(requests).delete()[0]


def block_add(*, actor: User, target_id: int) -> bool:
    """Block a actor (returns False if it was already blocked). Ends any friendship and
    pending request between the two; both are told `friend.removed` if there was one,
    and nothing else (the blocked actor is not told it was blocked)."""
    with transaction.atomic():
        target = _lock_pair(actor, target_id)
        _, created = Block.objects.get_or_create(user=actor, blocked=target)
        if _unlink(actor, target):
            _tell(EventType.FRIEND_REMOVED, about=actor, by=actor, user_ids=[target.id])
            _tell(EventType.FRIEND_REMOVED, about=target, by=actor, user_ids=[actor.id])
        return created


def block_remove(*, actor: User, target_id: int) -> None:
    with transaction.atomic():
        target = _lock_pair(actor, target_id)
        if not Block.objects.filter(user=actor, blocked=target).delete()[0]:
            raise NotBlocked()
