"""The API shapes of users (also carried by account events): pure functions from rows to
JSON-able dicts."""

from django.conf import settings

from accounts.models import Device, User
from chatserver.broker_access import user_topic


def user_data(user: User) -> dict:
    return {
        "id": user.id,
        "username": user.username,
        "presence": user.presence,
        "last_seen": user.last_seen,
    }


def mqtt_block(*, device: Device, request) -> dict:
    host = settings.MQTT_PUBLIC_HOST or request.get_host().rsplit(":", 1)[0].strip("[]")
    plaintext, tls = settings.MQTT_PLAINTEXT, settings.MQTT_TLS
    return {
        "host": host,
        # Plaintext listeners (null when MQTT_PLAINTEXT=off), then their TLS twins (null
        # when the broker has none): apps on the internet use TLS.
        "port": settings.MQTT_PUBLIC_PORT if plaintext else None,
        "ws_port": settings.MQTT_PUBLIC_WS_PORT if plaintext else None,
        "tls_port": settings.MQTT_PUBLIC_TLS_PORT if tls else None,
        "wss_port": settings.MQTT_PUBLIC_WSS_PORT if tls else None,
        "plaintext": plaintext,
        "username": device.mqtt_username,
        "password": device.mqtt_password,
        "client_id": device.mqtt_client_id,
        "user_topic": user_topic(device.user_id),
        # Connect with this keepalive, and publish one's presence again this often.
        "keepalive": settings.MQTT_KEEPALIVE,
    }


def session_data(*, device: Device, request, token: str | None = None) -> dict:
    data = {"id": device.user_id, "username": device.user.username}
    if token is not None:
        data["token"] = token
    data["mqtt"] = mqtt_block(device=device, request=request)
    data["settings"] = {"read_receipts": device.user.read_receipts, "push_previews": device.user.push_previews}
    data["push"] = device.push_token is not None
    return data
