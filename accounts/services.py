"""Writes about accounts and devices. Each queues its broker changes in its transaction.

Deleting and deactivating accounts are in `accounts.deletion` (they leave chats too).
"""

from collections.abc import Iterable

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction

from accounts import avatars
from accounts.errors import DeviceNotFound, InvalidCredentials, UsernameTaken, WrongPassword
from accounts.models import Device, Friendship, RetiredUsername, User, hash_token
from accounts.selectors import user_get_by_username
from accounts.shapes import user_data
from chats.models import Membership
from chatserver import outbox
from chatserver.broker_access import DeviceAdd, DeviceRemove, UserAdd
from chatserver.errors import InvalidInput
from chatserver.events import Event, EventType
from chatserver.models import OutboxEvent

# The names deleted accounts are renamed to (accounts.deletion); nobody signs up as one.
DELETED_USERNAME_PREFIX = "deleted-"


def _username_reserved(username: str) -> bool:
    """A deleted account's name, or one of the names deleted accounts get."""
    return username.lower().startswith(DELETED_USERNAME_PREFIX) or RetiredUsername.objects.filter(
        name_hash=RetiredUsername.hash(username)
    ).exists()


def _device_create(*, user: User, name: str = "") -> tuple[Device, str, list[DeviceAdd]]:
    token = Device.new_token()
    device = Device.objects.create(user=user, token_hash=hash_token(token), name=name)
    access = [
        DeviceAdd(
            user=user.id,
            username=device.mqtt_username,
            password=device.mqtt_password,
            client_id=device.mqtt_client_id,
        )
    ]
    return device, token, access


def user_signup(*, username: str, password: str, device_name: str = "") -> tuple[Device, str]:
    """Create a user and its first device; return (device, token).

    The user's and the device's broker accounts are queued in the same transaction and,
    when the broker is up, exist before this returns: the MQTT credentials work at once.
    """
    candidate = User(username=username)
    try:
        password_validation.validate_password(password, user=candidate)
    except DjangoValidationError as exc:
        raise InvalidInput(fields={"password": list(exc.messages)}) from None
    if user_get_by_username(username=username) is not None or _username_reserved(username):
        raise UsernameTaken()
    try:
        with transaction.atomic():
            candidate.set_password(password)
            candidate.save()
            device, token, access = _device_create(user=candidate, name=device_name)
            event = outbox.enqueue(access=[UserAdd(user=candidate.id), *access])
    except IntegrityError:
        # Two signups raced for the same name; the other one won.
        raise UsernameTaken() from None
    outbox.wait_applied([event])
    return device, token


def user_login(*, username: str, password: str, device_name: str = "") -> tuple[Device, str]:
    """Check the password and open a new device; return (device, token).

    Every login is a device of its own, with its own token and MQTT account, so logging
    out one phone leaves the others working. Like signup, it waits for the broker.
    """
    user = user_get_by_username(username=username)
    if user is None or not user.is_active:
        # Spend the same time as a real check, so timing does not tell which names exist.
        User().set_password(password)
        raise InvalidCredentials()
    if not user.check_password(password):
        raise InvalidCredentials()
    with transaction.atomic():
        # The user row locked and read again: a deactivation committed since the check
        # above refuses this login, and one coming after waits for this device and signs
        # it out too (User.save), so no device of an inactive user outlives the race.
        if not User.objects.select_for_update().filter(id=user.id, is_active=True).values_list("id", flat=True):
            raise InvalidCredentials()
        device, token, access = _device_create(user=user, name=device_name)
        event = outbox.enqueue(access=access)
    outbox.wait_applied([event])
    return device, token


def devices_sign_out(*, devices: Iterable[Device]) -> OutboxEvent | None:
    """Sign devices out, in the caller's transaction: their HTTP tokens stop working at
    commit, their push tokens go with their rows, and their MQTT accounts are deleted (the
    broker drops their connections and the relay clears their retained presence) in one
    outbox row. Returns that row (None if there was no device), for `outbox.wait_applied`.

    The one way a device ends: logout, signing out another device, a password change,
    account deletion, an operator's deactivation and any other save of an inactive user
    (User.save, and the presence worker's sweep for what no save saw) all come here.
    """
    assert transaction.get_connection().in_atomic_block, "devices_sign_out() belongs inside a transaction"
    devices = list(devices)
    if not devices:
        return None
    ops = [DeviceRemove(user=d.user_id, username=d.mqtt_username, client_id=d.mqtt_client_id) for d in devices]
    Device.objects.filter(id__in=[d.id for d in devices]).delete()
    return outbox.enqueue(access=ops)


# At most this many devices per round of `inactive_devices_sign_out` (one outbox row).
INACTIVE_SWEEP_BATCH = 500


def inactive_devices_sign_out(*, limit: int = INACTIVE_SWEEP_BATCH) -> int:
    """Sign out devices whose user is inactive; return how many. Normally none: every save
    of an inactive user signs its devices out (User.save). This catches what no save sees:
    `User.objects.filter(...).update(is_active=False)`, raw SQL, a restored backup. The
    presence worker calls it every few seconds (accounts/workers.py). Devices locked by
    a sign-out under way are skipped (that one ends them)."""
    with transaction.atomic():
        devices = list(
            Device.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(user__is_active=False)
            .order_by("id")[:limit]
        )
        devices_sign_out(devices=devices)
    return len(devices)


def _wait(event: OutboxEvent | None) -> None:
    if event is not None:
        outbox.wait_applied([event])


def device_logout(*, device: Device) -> None:
    """End one device: its HTTP token stops working at once, its MQTT account is deleted
    (which also disconnects it) as soon as the relay gets to it, normally before this
    returns."""
    with transaction.atomic():
        event = devices_sign_out(devices=[device])
    _wait(event)


def device_sign_out(*, actor: User, device_id: int) -> None:
    """Sign out one of the actor's devices (the calling one too, like logout); another
    user's device is not found, whatever the id."""
    with transaction.atomic():
        device = Device.objects.select_for_update().filter(id=device_id, user=actor).first()
        if device is None:
            raise DeviceNotFound()
        event = devices_sign_out(devices=[device])
    _wait(event)


def user_password_change(
    *, actor: User, device: Device, current_password: str, new_password: str, keep_other_devices: bool = False
) -> User:
    """Change the actor's password, confirmed by the current one. Every other device of
    the actor is signed out (`devices_sign_out`) unless `keep_other_devices`; the calling
    device stays signed in (its token and MQTT password do not depend on the password)."""
    if not actor.check_password(current_password):
        raise WrongPassword("current_password")
    try:
        password_validation.validate_password(new_password, user=actor)
    except DjangoValidationError as exc:
        raise InvalidInput(fields={"new_password": list(exc.messages)}) from None
    with transaction.atomic():
        actor.set_password(new_password)
        actor.save(update_fields=["password"])
        event = None
        if not keep_other_devices:
            others = Device.objects.select_for_update().filter(user=actor).exclude(id=device.id).order_by("id")
            event = devices_sign_out(devices=others)
    _wait(event)
    return actor


def user_audience(user_id: int) -> list[int]:
    """Who is told about changes to a person: its own devices, its friends, and everyone
    it shares a chat with."""
    partners = Membership.objects.filter(
        chat_id__in=Membership.objects.filter(user_id=user_id).values("chat_id")
    ).values_list("user_id", flat=True)
    friends = Friendship.objects.filter(user_id=user_id).values_list("friend_id", flat=True)
    return sorted({user_id, *partners, *friends})


def user_updated_enqueue(*, user: User, user_ids: Iterable[int] | None = None) -> OutboxEvent:
    """Queue `user.updated` (the user as it is now) to its audience, in the caller's
    transaction; in line with the user's other states (keyed by the user: its relay
    partition, `outbox.partition_key`), also when the user is not among the recipients."""
    return outbox.enqueue(
        event=Event(type=EventType.USER_UPDATED, data=user_data(user)),
        user_ids=user_audience(user.id) if user_ids is None else list(user_ids),
        key=user.id,
    )


def user_settings_update(
    *,
    actor: User,
    read_receipts: bool | None = None,
    push_previews: bool | None = None,
    display_name: str | None = None,
) -> User:
    """Change the actor's own settings and profile: whether others see its read pointer
    (`read_receipts`), whether its pushes carry message previews (`push_previews`), its
    display name (`""` removes it). A new display name is told to its friends and chat
    partners (`user.updated`); settings are nobody else's business."""
    wanted = (("read_receipts", read_receipts), ("push_previews", push_previews), ("display_name", display_name))
    changes = {name: value for name, value in wanted if value is not None and value != getattr(actor, name)}
    if not changes:
        return actor
    with transaction.atomic():
        for name, value in changes.items():
            setattr(actor, name, value)
        actor.save(update_fields=list(changes))
        if "display_name" in changes:
            user_updated_enqueue(user=actor)
    return actor


def user_avatar_set(*, actor: User, upload) -> User:
    """Make an uploaded image the actor's avatar (`accounts.avatars`: re-encoded, with a
    thumbnail); friends and chat partners get `user.updated`. Not an image: 400 on
    `file`. The previous picture's files go once this is committed."""
    full, thumb = avatars.prepare(upload)
    names = avatars.store(user_id=actor.id, full=full, thumbnail=thumb)
    try:
        with transaction.atomic():
            old = _avatar_replace(actor, names)
    except BaseException:
        avatars.discard(*names)
        raise
    transaction.on_commit(lambda: avatars.discard(*old))
    return actor


def user_avatar_clear(*, actor: User) -> User:
    """Remove the actor's avatar (nothing happens if it has none)."""
    if not actor.avatar:
        return actor
    with transaction.atomic():
        old = _avatar_replace(actor, ("", ""))
    transaction.on_commit(lambda: avatars.discard(*old))
    return actor


def _avatar_replace(actor: User, names: tuple[str, str]) -> tuple[str, str]:
    """Set the avatar's names under the user's row lock (two uploads at once: each
    discards the files it replaced, none is left behind); return the old names."""
    old = User.objects.select_for_update().values_list("avatar", "avatar_thumbnail").get(id=actor.id)
    actor.avatar, actor.avatar_thumbnail = names
    actor.save(update_fields=["avatar", "avatar_thumbnail"])
    user_updated_enqueue(user=actor)
    return old


def push_token_set(*, device: Device, token: str) -> None:
    """Register (or replace) the device's FCM registration token. A token another device
    had moves to this one: the app was reinstalled or the phone changed hands, and the
    token now reaches only this device."""
    for attempt in range(2):
        try:
            with transaction.atomic():
                Device.objects.filter(push_token=token).exclude(id=device.id).update(push_token=None)
                Device.objects.filter(id=device.id).update(push_token=token)
            break
        except IntegrityError:
            # Two devices registered the same token at once; the other one committed
            # first. Once more: now its row is visible and moves.
            if attempt:
                raise
    device.push_token = token


def push_token_clear(*, device: Device) -> None:
    """Forget the device's token: no more pushes to it (logout does this too, with the
    device)."""
    Device.objects.filter(id=device.id).update(push_token=None)
    device.push_token = None
