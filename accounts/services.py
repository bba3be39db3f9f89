"""Writes about accounts and devices. Each queues its broker changes in its transaction."""

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction

from accounts.models import Device, User, hash_token
from accounts.selectors import user_get_by_username
from chatserver import outbox
from chatserver.broker_access import DeviceAdd, DeviceRemove, UserAdd
from accounts.errors import InvalidCredentials, UsernameTaken
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


def user_settings_update(*, actor: User, read_receipts: bool | None = None) -> User:
    """Change the actor's own settings (today: whether others see its read pointer)."""
    if read_receipts is not None and read_receipts != actor.read_receipts:
        actor.read_receipts = read_receipts
        actor.save(update_fields=["read_receipts"])
    return actor
