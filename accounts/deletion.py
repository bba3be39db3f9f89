"""Ending accounts: a person deleting its own, an operator deactivating one.

Both sign every device out through `accounts.services.devices_sign_out` (HTTP tokens,
push tokens, MQTT accounts: the outbox carries one DeviceRemove per device), in the same
transaction as the rest of the change. Any other path that makes a user inactive does too:
`User.save` signs out the devices of a user saved inactive, and the presence worker's
sweep (`accounts.services.inactive_devices_sign_out`) those of one made inactive without
a save.

Deleting an account keeps what others need to make sense of their history, and nothing
that says who the person was:
- the user row stays, anonymised and inactive: username `deleted-<id>`, no display name,
  avatar, password or e-mail, presence offline, `deleted_at` set; its messages keep their
  author and are shown under "Deleted user" (`accounts.shapes.user_data`: `deleted: true`);
- its groups are left as when a member leaves (`chats.services.members.member_remove`):
  members get `member.removed`, an owner's ownership passes on (`member.updated`), a group
  it was the last member of is deleted;
- its direct chats stay, for the other person, with their history; that person gets
  `user.updated` (the deleted user) and can still read (and hide) the chat;
- friendships and pending requests end (the other person gets `friend.removed`), blocks
  either way are removed;
- the username is never free again (`RetiredUsername` keeps a hash of it): nobody can sign
  up under it and pass for the person the others knew.
"""

import uuid

from django.contrib.auth.hashers import make_password
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts import avatars
from accounts.errors import UserNotFound, WrongPassword
from accounts.models import Block, Device, FriendRequest, Friendship, RetiredUsername, User
from accounts.services import DELETED_USERNAME_PREFIX, devices_sign_out, user_audience, user_updated_enqueue
from accounts.shapes import user_data
from chats.models import Chat, Membership
from chats.services.members import member_remove
from chatserver import outbox
from chatserver.errors import PermissionDenied
from chatserver.events import Event, EventType


def user_delete(*, actor: User, password: str) -> None:
    """Delete the actor's own account, confirmed by its password (see the module's
    docstring for what stays and who is told). One transaction; the devices' MQTT
    accounts are gone by the time this returns, while the broker is up."""
    if not actor.check_password(password):
        raise WrongPassword("password")
    with transaction.atomic():
        user = User.objects.select_for_update().get(id=actor.id)
        if user.deleted_at is not None:
            return
        groups = Membership.objects.filter(user=user, chat__kind=Chat.Kind.GROUP).order_by("chat_id")
        for chat_id in list(groups.values_list("chat_id", flat=True)):
            member_remove(chat_id=chat_id, actor=user, user_id=user.id)
        devices = devices_sign_out(devices=Device.objects.select_for_update().filter(user=user).order_by("id"))
        friends = _relations_end(user)
        old_avatar = (user.avatar, user.avatar_thumbnail)
        _anonymise(user)
        for friend_id in friends:
            outbox.enqueue(
                event=Event(type=EventType.FRIEND_REMOVED, data={"user": user_data(user), "by": user.id}),
                user_ids=[friend_id],
            )
        # Whoever still shares a chat with it (its direct chats' other members).
        partners = [uid for uid in user_audience(user.id) if uid != user.id]
        if partners:
            user_updated_enqueue(user=user, user_ids=partners)
        transaction.on_commit(lambda: avatars.discard(*old_avatar))
    actor.is_active, actor.deleted_at = False, user.deleted_at
    if devices is not None:
        outbox.wait_applied([devices])


def _relations_end(user: User) -> list[int]:
    """Delete the user's friendships, requests and blocks, either way; return the ids of
    the people a friendship or request with it ended for."""
    others = set(Friendship.objects.filter(user=user).values_list("friend_id", flat=True))
    requests = FriendRequest.objects.filter(Q(from_user=user) | Q(to_user=user))
    for from_id, to_id in requests.values_list("from_user_id", "to_user_id"):
        others.add(to_id if from_id == user.id else from_id)
    Friendship.objects.filter(Q(user=user) | Q(friend=user)).delete()
    requests.delete()
    Block.objects.filter(Q(user=user) | Q(blocked=user)).delete()
    return sorted(others)


def _anonymise(user: User) -> None:
    RetiredUsername.objects.get_or_create(name_hash=RetiredUsername.hash(user.username))
    user.username = f"{DELETED_USERNAME_PREFIX}{user.id}"
    if User.objects.filter(username__iexact=user.username).exclude(id=user.id).exists():
        # An account from before the prefix was reserved holds that name.
        user.username = f"{DELETED_USERNAME_PREFIX}{user.id}-{uuid.uuid4().hex[:4]}"  # 32 characters at most
    user.password = make_password(None)  # unusable
    user.first_name = user.last_name = user.email = user.display_name = ""
    user.avatar = user.avatar_thumbnail = ""
    user.presence, user.last_seen = User.Presence.OFFLINE, None
    user.is_active, user.is_staff, user.is_superuser = False, False, False
    user.deleted_at = timezone.now()
    user.save()


def user_deactivate(*, actor: User, user_id: int) -> User:
    """An operator (staff) stops an account at once: it can no longer log in, and every
    device is signed out (`devices_sign_out`). Nothing else changes (chats, friends);
    reactivating (`is_active` back on) lets the person log in again."""
    if not (actor.is_active and actor.is_staff):
        raise PermissionDenied("Only operators can deactivate accounts.")
    with transaction.atomic():
        user = User.objects.select_for_update().filter(id=user_id).first()
        if user is None:
            raise UserNotFound()
        # Signed out first, so that this call holds the outbox row to wait for (the save
        # would sign out any device left: User.save).
        devices = devices_sign_out(devices=Device.objects.select_for_update().filter(user=user).order_by("id"))
        if user.is_active:
            user.is_active = False
            user.save(update_fields=["is_active"])
    if devices is not None:
        outbox.wait_applied([devices])
    return user


def user_reactivate(*, actor: User, user_id: int) -> User:
    """An operator lets a deactivated account log in again (its devices stay signed out:
    the person logs in anew). A deleted account stays deleted."""
    if not (actor.is_active and actor.is_staff):
        raise PermissionDenied("Only operators can reactivate accounts.")
    with transaction.atomic():
        user = User.objects.select_for_update().filter(id=user_id).first()
        if user is None:
            raise UserNotFound()
        if user.deleted_at is not None:
            raise PermissionDenied("A deleted account cannot be reactivated.")
        if not user.is_active:
            user.is_active = True
            user.save(update_fields=["is_active"])
    return user
