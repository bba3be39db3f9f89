"""Writes about who talks to whom: friend requests, friendships, blocks.

Every change locks both users' rows, lower id first, so two requests crossing each other
(A asks B while B asks A) are serialized and become one friendship, and a block cannot
interleave with an accept. Each change tells the affected users on their topics.
"""

from django.db import transaction
from django.db.models import Q

from accounts.events import user_data
from accounts.models import Block, FriendRequest, Friendship, User
from accounts.selectors import UserNotFound
from chatserver import outbox
from chatserver.events import Event, EventType
from chatserver.errors import ApplicationError, NotFound, PermissionDenied


class BlockedError(PermissionDenied):
    code = "blocked"
    message = "You cannot do this with this user."


class NothingToRemove(NotFound):
    code = "not_found"
    message = "No friendship or request with this user."


class SelfTarget(ApplicationError):
    code = "invalid_target"
    message = "You cannot do this with yourself."


def _lock_pair(user: User, other_id: int) -> User:
    """Lock both users (lower id first) and return the other one."""
    if other_id == user.id:
        raise SelfTarget()
    locked = {u.id: u for u in User.objects.select_for_update().filter(id__in=[user.id, other_id], is_active=True).order_by("id")}
    if other_id not in locked:
        raise UserNotFound()
    return locked[other_id]


def blocked_between(a_id: int, b_id: int) -> bool:
    return Block.objects.filter(Q(user_id=a_id, blocked_id=b_id) | Q(user_id=b_id, blocked_id=a_id)).exists()


def _tell(type: EventType, *, about: User, by: User, user_ids: list[int]) -> None:
    outbox.enqueue(event=Event(type=type, data={"user": user_data(about), "by": by.id}), user_ids=user_ids)


def friend_request_send(*, user: User, target_id: int) -> tuple[str, bool]:
    """Ask `target_id` to be friends, or accept its pending request; return (status, changed).

    `status` is "requested" or "friends". Asking again changes nothing. Refused when
    either has blocked the other (the same answer both ways: it does not tell who).
    """
    with transaction.atomic():
        target = _lock_pair(user, target_id)
        if blocked_between(user.id, target.id):
            raise BlockedError()
        if Friendship.objects.filter(user=user, friend=target).exists():
            return "friends", False
        incoming = FriendRequest.objects.filter(from_user=target, to_user=user)
        if incoming.exists():
            incoming.delete()
            FriendRequest.objects.filter(from_user=user, to_user=target).delete()
            Friendship.objects.bulk_create(
                [Friendship(user=user, friend=target), Friendship(user=target, friend=user)]
            )
            _tell(EventType.FRIEND_ACCEPTED, about=user, by=user, user_ids=[target.id])
            _tell(EventType.FRIEND_ACCEPTED, about=target, by=user, user_ids=[user.id])
            return "friends", True
        _, created = FriendRequest.objects.get_or_create(from_user=user, to_user=target)
        if created:
            _tell(EventType.FRIEND_REQUESTED, about=user, by=user, user_ids=[target.id])
            _tell(EventType.FRIEND_REQUESTED, about=target, by=user, user_ids=[user.id])
        return "requested", created


def friend_remove(*, user: User, target_id: int) -> None:
    """Unfriend, cancel one's request, or decline theirs; both are told `friend.removed`."""
    with transaction.atomic():
        target = _lock_pair(user, target_id)
        removed = _unlink(user, target)
        if not removed:
            raise NothingToRemove()
        _tell(EventType.FRIEND_REMOVED, about=user, by=user, user_ids=[target.id])
        _tell(EventType.FRIEND_REMOVED, about=target, by=user, user_ids=[user.id])


def _unlink(user: User, target: User) -> int:
    """Delete any friendship and request between the two; return how many rows went."""
    pair = Q(user=user, friend=target) | Q(user=target, friend=user)
    requests = Q(from_user=user, to_user=target) | Q(from_user=target, to_user=user)
    return Friendship.objects.filter(pair).delete()[0] + FriendRequest.objects.filter(requests).delete()[0]


def block_add(*, user: User, target_id: int) -> bool:
    """Block a user (returns False if it was already blocked). Ends any friendship and
    pending request between the two; both are told `friend.removed` if there was one,
    and nothing else (the blocked user is not told it was blocked)."""
    with transaction.atomic():
        target = _lock_pair(user, target_id)
        _, created = Block.objects.get_or_create(user=user, blocked=target)
        if _unlink(user, target):
            _tell(EventType.FRIEND_REMOVED, about=user, by=user, user_ids=[target.id])
            _tell(EventType.FRIEND_REMOVED, about=target, by=user, user_ids=[user.id])
        return created


def block_remove(*, user: User, target_id: int) -> None:
    with transaction.atomic():
        target = _lock_pair(user, target_id)
        if not Block.objects.filter(user=user, blocked=target).delete()[0]:
            raise NotFound("This user is not blocked.")
