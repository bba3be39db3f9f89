"""The API shapes of users (also carried by account events): pure functions from rows to
JSON-able dicts."""

from django.conf import settings

from accounts.models import Device, User
from chatserver.broker_access import user_topic


# What a deleted account is shown as (its row stays so its messages keep an author).
DELETED_USER_NAME = "Deleted user"


def avatar_data(user: User) -> dict | None:
    """Where to fetch the user's avatar (paths on the API's host, a token needed), or None.
    The `v` parameter changes with the picture, so a cached copy under one URL is never
    stale."""
    if not user.avatar:
        return None
    version = user.avatar.rsplit("/", 1)[-1][:12]
    return {
        "url": f"/accounts/{user.id}/avatar/?v={version}",
        "thumbnail_url": f"/accounts/{user.id}/avatar/thumbnail/?v={version}",
    }


def user_data(user: User) -> dict:
    return {
        "id": user.id,
        "username": user.username,
        "display_name": DELETED_USER_NAME if user.deleted_at else user.display_name,
        "avatar": avatar_data(user),
        "presence": user.presence,
        "last_seen": user.last_seen,
        "deleted": user.deleted_at is not None,
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
    user = device.user
    data = {"id": device.user_id, "username": user.username}
    if token is not None:
        data["token"] = token
    data["display_name"] = user.display_name
    data["avatar"] = avatar_data(user)
    data["mqtt"] = mqtt_block(device=device, request=request)
    data["settings"] = {"read_receipts": user.read_receipts, "push_previews": user.push_previews}
    data["push"] = device.push_token is not None
    return data


def device_data(device: Device, *, current: Device) -> dict:
    return {
        "id": device.id,
        "name": device.name,
        "created_at": device.created_at,
        "last_seen_at": device.last_seen_at,
        "current": device.id == current.id,
    }
