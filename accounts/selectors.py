from django.db.models.functions import Lower
from django.utils import timezone

from accounts.errors import UserNotFound
from accounts.models import Block, Device, FriendRequest, Friendship, User



def user_get_by_username(*, username: str) -> User | None:
    """The user with this name, ignoring case (served by the case-insensitive index)."""
    return User.objects.alias(lname=Lower("username")).filter(lname=username.lower()).first()


def user_get_visible(*, user_id: int, caller: User) -> User:
    """A user's profile as the caller may see it: not found if it blocked the caller."""
    user = (
        User.objects.filter(id=user_id, is_active=True)
        .exclude(id__in=Block.objects.filter(blocked=caller).values("user_id"))
        .first()
    )
    if user is None:
        raise UserNotFound()
    return user


def user_search(*, caller: User, prefix: str):
    """Active users whose name starts with `prefix` (any case), by name; never those who
    blocked the caller."""
    blockers = Block.objects.filter(blocked=caller).values("user_id")
    return (
        User.objects.alias(lname=Lower("username"))
        .filter(lname__startswith=prefix.lower(), is_active=True)
        .exclude(id__in=blockers)
        .order_by("lname", "id")
    )


def friend_list(*, user: User):
    return User.objects.filter(
        id__in=Friendship.objects.filter(user=user).values("friend_id")
    ).order_by("username", "id")


def friend_requests(*, user: User) -> dict[str, list[User]]:
    incoming = User.objects.filter(
        id__in=FriendRequest.objects.filter(to_user=user).values("from_user_id")
    ).order_by("username")
    outgoing = User.objects.filter(
        id__in=FriendRequest.objects.filter(from_user=user).values("to_user_id")
    ).order_by("username")
    return {"incoming": list(incoming), "outgoing": list(outgoing)}


def block_list(*, user: User):
    return User.objects.filter(
        id__in=Block.objects.filter(user=user).values("blocked_id")
    ).order_by("username", "id")


def wakeable_devices(*, now=None):
    """The devices a push must wake: a push token and no live MQTT connection (see
    `Device.connected_q`), by id; a queryset, for callers to narrow and annotate."""
    return (
        Device.objects.filter(push_token__isnull=False)
        .exclude(Device.connected_q(now=now or timezone.now()))
        .order_by("id")
    )


def devices_to_wake(*, user_ids: list[int], exclude_device_ids=()) -> list[Device]:
    """The users' devices a push must wake (`wakeable_devices`)."""
    return list(
        wakeable_devices()
        .filter(user_id__in=user_ids)
        .exclude(id__in=[d for d in exclude_device_ids if d is not None])
    )


def device_list(*, user: User) -> list[Device]:
    """The user's devices, newest first."""
    return list(Device.objects.filter(user=user).order_by("-created_at", "-id"))
