"""What a push says about people: friend requests; and forgetting dead tokens.

Registered from `AccountsConfig.ready()` with the `push` worker (chatserver/push.py).
"""

from django.conf import settings

from accounts.models import Device, User
from accounts.selectors import devices_to_wake
from chatserver.fcm import FcmMessage
from chatserver.push import Delivery


def build_friend_request(data: dict) -> list[Delivery]:
    sender = User.objects.filter(id=data["from_id"]).first()
    if sender is None:
        return []
    payload = {"type": "friend_request", "user_id": str(sender.id), "username": sender.username}
    return [
        Delivery(device.id, FcmMessage(
            token=device.push_token, data=payload, priority="high",
            collapse_key=f"friend-{sender.id}", ttl_seconds=settings.PUSH_TTL,
        ))
        for device in devices_to_wake(user_ids=[data["to_id"]])
    ]


def forget_dead_token(device_id: int, token: str) -> None:
    """FCM says the token will never work again: no more pushes to it (unless the device
    registered a new one meanwhile)."""
    Device.objects.filter(id=device_id, push_token=token).update(push_token=None)
