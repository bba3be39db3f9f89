from django.conf import settings
from rest_framework import serializers

from accounts.models import Device, User, UsernameValidator
from chatserver.broker_access import user_topic
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
    port = serializers.IntegerField()
    ws_port = serializers.IntegerField()
    username = serializers.CharField()
    password = serializers.CharField()
    client_id = serializers.CharField()
    user_topic = serializers.CharField()


def mqtt_block(*, device: Device, request) -> dict:
    host = settings.MQTT_PUBLIC_HOST or request.get_host().rsplit(":", 1)[0].strip("[]")
    return {
        "host": host,
        "port": settings.MQTT_PUBLIC_PORT,
        "ws_port": settings.MQTT_PUBLIC_WS_PORT,
        "username": device.mqtt_username,
        "password": device.mqtt_password,
        "client_id": device.mqtt_client_id,
        "user_topic": user_topic(device.user_id),
    }


class SessionOutput(serializers.Serializer):
    """The answer to signup and login (and /accounts/me/, without the token)."""

    id = serializers.IntegerField()
    username = serializers.CharField()
    token = serializers.CharField(required=False)
    mqtt = MqttOutput()


def session_data(*, device: Device, request, token: str | None = None) -> dict:
    data = {"id": device.user_id, "username": device.user.username}
    if token is not None:
        data["token"] = token
    data["mqtt"] = mqtt_block(device=device, request=request)
    return data


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
