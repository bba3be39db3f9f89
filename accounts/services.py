"""Writes about accounts and devices. Each queues its broker changes in its transaction."""

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction

from accounts.errors import InvalidCredentials, UsernameTaken
from accounts.models import Device, User, hash_token
from accounts.selectors import user_get_by_username
from chatserver import outbox
from chatserver.broker_access import DeviceAdd, DeviceRemove, UserAdd
from chatserver.errors import InvalidInput





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
    if user_get_by_username(username=username) is not None:
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
        device, token, access = _device_create(user=user, name=device_name)
        event = outbox.enqueue(access=access)
    outbox.wait_applied([event])
    return device, token


def device_logout(*, device: Device) -> None:
    """End one device: its HTTP token stops working at once, its MQTT account is deleted
    (which also disconnects it) as soon as the relay gets to it, normally before this
    returns."""
    with transaction.atomic():
        op = DeviceRemove(user=device.user_id, username=device.mqtt_username, client_id=device.mqtt_client_id)
        device.delete()
        event = outbox.enqueue(access=[op])
    outbox.wait_applied([event])


def user_settings_update(
    *, actor: User, read_receipts: bool | None = None, push_previews: bool | None = None
) -> User:
    """Change the actor's own settings: whether others see its read pointer
    (`read_receipts`), whether its pushes carry message previews (`push_previews`)."""
    changes = {
        name: value
        for name, value in (("read_receipts", read_receipts), ("push_previews", push_previews))
        if value is not None and value != getattr(actor, name)
    }
    for name, value in changes.items():
        setattr(actor, name, value)
    if changes:
        actor.save(update_fields=list(changes))
    return actor


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
