from django.core.validators import RegexValidator
from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from accounts import schema
from accounts.models import Device, User, UsernameValidator
from chatserver.fields import StrictBooleanField, StrictCharField


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
    port = serializers.IntegerField()
    ws_port = serializers.IntegerField()
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


@extend_schema_serializer(examples=[
    OpenApiExample("Signup or login (with the token)", value=schema.SESSION, status_codes=[200, 201]),
])
class SessionOutput(serializers.Serializer):
    """The answer to signup and login (and /accounts/me/, without the token)."""

    id = serializers.IntegerField()
    username = serializers.CharField()
    token = serializers.CharField(required=False)
    mqtt = MqttOutput()
    settings = SettingsOutput()
    push = serializers.BooleanField(help_text="Whether this device has a push token registered.")


@extend_schema_serializer(examples=[OpenApiExample("A user", value=schema.USER)])
class UserOutput(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "username", "presence", "last_seen"]


@extend_schema_serializer(examples=[OpenApiExample("Asked", value={"status": "requested"}, status_codes=[201]),
                                    OpenApiExample("Friends", value={"status": "friends"}, status_codes=[200])])
class FriendStatusOutput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["requested", "friends"])


@extend_schema_serializer(examples=[OpenApiExample("One each way", value={"incoming": [schema.USER], "outgoing": [
    {"id": 44, "username": "carol", "presence": "offline", "last_seen": None}]})])
class FriendRequestsOutput(serializers.Serializer):
    incoming = UserOutput(many=True)
    outgoing = UserOutput(many=True)


@extend_schema_serializer(examples=[OpenApiExample("Blocked", value={"status": "blocked"})])
class BlockStatusOutput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["blocked"])


@extend_schema_serializer(examples=[OpenApiExample("Read receipts off", value={"read_receipts": False})])
class SettingsInput(serializers.Serializer):
    read_receipts = StrictBooleanField(required=False)
    push_previews = StrictBooleanField(required=False)


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
