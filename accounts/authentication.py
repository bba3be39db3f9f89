from rest_framework import authentication, exceptions

from accounts.models import Device, hash_token


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
        return device.user, device


class BearerTokenAuthentication(DeviceTokenAuthentication):
    """The same token as `Authorization: Bearer <token>`."""

    keyword = "Bearer"
