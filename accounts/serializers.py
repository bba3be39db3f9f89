from rest_framework import serializers

from accounts.models import Device, User, UsernameValidator
from chatserver.fields import StrictCharField


class CredentialsInput(serializers.Serializer):
    username = StrictCharField(max_length=32, trim_whitespace=False)
    password = StrictCharField(max_length=128, trim_whitespace=False, write_only=True)
    device_name = StrictCharField(max_length=100, required=False, default="", allow_blank=True)


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


class SessionOutput(serializers.Serializer):
    """The answer to signup and login (and /accounts/me/, without the token)."""

    id = serializers.IntegerField()
    username = serializers.CharField()
    token = serializers.CharField(required=False)
    mqtt = MqttOutput()
    settings = SettingsOutput()
    push = serializers.BooleanField(help_text="Whether this device has a push token registered.")


class UserOutput(serializers.ModelSerializer):
    class Meta:
        model = User
        fields = ["id", "username", "presence", "last_seen"]


class FriendStatusOutput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["requested", "friends"])


class FriendRequestsOutput(serializers.Serializer):
    incoming = UserOutput(many=True)
    outgoing = UserOutput(many=True)


class BlockStatusOutput(serializers.Serializer):
    status = serializers.ChoiceField(choices=["blocked"])


class SettingsInput(serializers.Serializer):
    read_receipts = serializers.BooleanField(required=False)
    push_previews = serializers.BooleanField(required=False)


class PushTokenInput(serializers.Serializer):
    """An FCM registration token (FCM's are ~150-200 characters of letters, digits and
    `-_:`; anything printable without spaces is accepted, up to 1024)."""

    token = StrictCharField(max_length=1024, trim_whitespace=False)

    def validate_token(self, value: str) -> str:
        if not value.isascii() or not value.isprintable() or " " in value:
            raise serializers.ValidationError("Printable ASCII without spaces.")
        return value
