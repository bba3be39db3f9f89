from datetime import timedelta

from django.utils import timezone
from rest_framework import authentication, exceptions

from accounts.models import Device, hash_token

# `Device.last_seen_at` is written at most this often per device: the device list needs
# "when was this phone last used", not every request's time (and not a write per request
# on the send path).
LAST_SEEN_RESOLUTION = timedelta(minutes=1)


class DeviceTokenAuthentication(authentication.TokenAuthentication):
    """`Authorization: Token <token>`: the device whose token hash matches, and its user.

    `request.auth` is the Device, so logout knows which device to end.
    """

    model = Device

    def authenticate_credentials(self, key: str):
        try:
            device = Device.objects.select_related("user").get(token_hash=hash_token(key))
        except Device.DoesNotExist:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.") from None
        if not device.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        now = timezone.now()
        if device.last_seen_at is None or now - device.last_seen_at >= LAST_SEEN_RESOLUTION:
            Device.objects.filter(id=device.id).update(last_seen_at=now)
            device.last_seen_at = now
        return device.user, device


class BearerTokenAuthentication(DeviceTokenAuthentication):
    """The same token as `Authorization: Bearer <token>`."""

    keyword = "Bearer"
