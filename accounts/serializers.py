import unicodedata

from django.core.validators import RegexValidator
from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from accounts import schema
from accounts.models import UsernameValidator
from accounts.shapes import device_data, user_data
from chatserver.fields import StrictBooleanField, StrictCharField, StrictInput


@extend_schema_serializer(examples=[OpenApiExample("A phone", value={"username": "alice", "password": "correct horse battery", "device_name": "Pixel 8"})])
class CredentialsInput(serializers.Serializer):
    username = StrictCharField(max_length=32, trim_whitespace=False)
    password = StrictCharField(max_length=128, trim_whitespace=False, write_only=True)
    device_name = StrictCharField(max_length=100, required=False, default="", allow_blank=True)


@extend_schema_serializer(examples=[OpenApiExample("A new user", value={"username": "alice", "password": "correct horse battery", "device_name": "Pixel 8"})])
class SignupInput(CredentialsInput):
    username = StrictCharField(
        max_length=32, trim_whitespace=False, validators=[UsernameValidator()]
    )


class MqttOutput(serializers.Serializer):
    """How a device connects to the broker. `host` is where the HTTP request came to
    unless MQTT_PUBLIC_HOST says otherwise."""

    host = serializers.CharField()
    port = serializers.IntegerField(allow_null=True, help_text="MQTT over TCP; null when plaintext is off")
    ws_port = serializers.IntegerField(allow_null=True, help_text="MQTT over WebSockets; null when plaintext is off")
    tls_port = serializers.IntegerField(allow_null=True, help_text="MQTT over TLS; null when the broker has no TLS")
    wss_port = serializers.IntegerField(allow_null=True, help_text="MQTT over WebSockets over TLS (wss://)")
    plaintext = serializers.BooleanField(help_text="whether the plaintext listeners are offered at all")
    username = serializers.CharField()
    password = serializers.CharField()
    client_id = serializers.CharField()
    user_topic = serializers.CharField()
    keepalive = serializers.IntegerField(
        help_text="seconds: the MQTT keepalive to use, and how often to publish one's presence again"
    )


class SettingsOutput(serializers.Serializer):
    read_receipts = serializers.BooleanField()
    push_previews = serializers.BooleanField()


class AvatarOutput(serializers.Serializer):
    """Paths on the API's host (a token needed); they change when the picture does."""

    url = serializers.CharField()
    thumbnail_url = serializers.CharField()


@extend_schema_serializer(examples=[
    OpenApiExample("Signup or login (with the token)", value=schema.SESSION, status_codes=[200, 201]),
])
class SessionOutput(serializers.Serializer):
    """The answer to signup and login (and /accounts/me/, without the token)."""

    id = serializers.IntegerField()
    username = serializers.CharField()
    token = serializers.CharField(required=False)
    display_name = serializers.CharField(help_text='Empty when not set.')
    avatar = AvatarOutput(allow_null=True)
    mqtt = MqttOutput()
    settings = SettingsOutput()
    push = serializers.BooleanField(help_text="Whether this device has a push token registered.")


@extend_schema_serializer(examples=[OpenApiExample("A user", value=schema.USER)])
class UserOutput(serializers.Serializer):
    """A person (`accounts.shapes.user_data`)."""

    id = serializers.IntegerField()
    username = serializers.CharField()
    display_name = serializers.CharField(
        help_text='What to show instead of the username when not empty; "Deleted user" for a deleted account.'
    )
    avatar = AvatarOutput(allow_null=True)
    presence = serializers.ChoiceField(choices=["online", "away", "offline"])
    last_seen = serializers.DateTimeField(allow_null=True)
    deleted = serializers.BooleanField(help_text="The account was deleted; its messages stay under this user.")

    def to_representation(self, instance):
        return user_data(instance)


@extend_schema_serializer(examples=[OpenApiExample("This phone", value=schema.DEVICE)])
class DeviceOutput(serializers.Serializer):
    """One of the caller's devices (`accounts.shapes.device_data`)."""

    id = serializers.IntegerField()
    name = serializers.CharField(help_text="The device_name given at login, else the client's User-Agent.")
    created_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField(
        allow_null=True, help_text="Its last authenticated request (to the minute); null if none since login."
    )
    current = serializers.BooleanField(help_text="Whether this is the calling device.")

    def to_representation(self, instance):
        return device_data(instance, current=self.context["current"])


@extend_schema_serializer(examples=[OpenApiExample("Asked", value={"status": "requested"}, status_codes=[201]),
                                    OpenApiExample("Friends", value={"status": "friends"}, status_codes=[200])])
class FriendStatusOutput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["requested", "friends"])


@extend_schema_serializer(examples=[OpenApiExample("One each way", value={"incoming": [schema.USER], "outgoing": [
    {**schema.USER, "id": 44, "username": "carol", "presence": "offline", "last_seen": None}]})])
class FriendRequestsOutput(serializers.Serializer):
    incoming = UserOutput(many=True)
    outgoing = UserOutput(many=True)


@extend_schema_serializer(examples=[OpenApiExample("Blocked", value={"status": "blocked"})])
class BlockStatusOutput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["blocked"])


def _printable(value: str) -> str:
    if any(unicodedata.category(c)[0] == "C" for c in value):
        raise serializers.ValidationError("No control or invisible formatting characters.")
    return value


@extend_schema_serializer(examples=[OpenApiExample("Read receipts off, a display name", value={"read_receipts": False, "display_name": "Alice B."})])
class SettingsInput(StrictInput):
    """What `PATCH /accounts/me/` may change; anything else is a 400 naming it."""

    read_only_names = frozenset({"id", "username", "token", "mqtt", "settings", "push", "avatar", "password"})

    read_receipts = StrictBooleanField(required=False)
    push_previews = StrictBooleanField(required=False)
    display_name = StrictCharField(
        max_length=64, allow_blank=True, required=False, validators=[_printable],
        help_text='Shown instead of the username; "" removes it.',
    )


@extend_schema_serializer(examples=[OpenApiExample("A new password", value={"current_password": "correct horse battery", "new_password": "battery staple horse", "keep_other_devices": False})])
class PasswordChangeInput(StrictInput):
    current_password = StrictCharField(max_length=128, trim_whitespace=False, write_only=True)
    new_password = StrictCharField(max_length=128, trim_whitespace=False, write_only=True)
    keep_other_devices = StrictBooleanField(
        required=False, default=False, help_text="Keep the other devices signed in (by default they are signed out)."
    )


@extend_schema_serializer(examples=[OpenApiExample("The password", value={"password": "correct horse battery"})])
class AccountDeleteInput(StrictInput):
    password = StrictCharField(max_length=128, trim_whitespace=False, write_only=True)


class AvatarInput(StrictInput):
    file = serializers.FileField(help_text="A JPEG, PNG, GIF or WebP image, at most 5 MB.")


@extend_schema_serializer(examples=[OpenApiExample("An FCM token", value={"token": "dGVzdC1kZXZpY2U6QVBBOTFiSGxrT0xjUm9zbTdyZ0p3"})])
class PushTokenInput(serializers.Serializer):
    """An FCM registration token (FCM's are ~150-200 characters of letters, digits and
    `-_:`; anything printable without spaces is accepted, up to 1024)."""

    token = StrictCharField(
        max_length=1024, trim_whitespace=False,
        # The pattern documents the rule (Python's `$` would also let a final newline
        # through, so the check itself is validate_token's).
        validators=[RegexValidator(r"^[!-~]+$", "Printable ASCII without spaces.")],
    )

    def validate_token(self, value: str) -> str:
        if not value.isascii() or not value.isprintable() or " " in value:
            raise serializers.ValidationError("Printable ASCII without spaces.")
        return value


class UserSearchQuery(serializers.Serializer):
    """`?search=`: a username prefix. Longer than a username can be, it matches nobody, so
    it is cut rather than refused; a NUL character (which no name has, and PostgreSQL
    refuses in a query) is a 400 on `search`."""

    search = serializers.CharField(
        required=False, default="", allow_blank=True, trim_whitespace=False, help_text="Prefix of the username (any case)."
    )
