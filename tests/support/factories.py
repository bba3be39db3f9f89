"""Users, devices and chats for tests, built through the real services (and, for chats
and messages, through the API as a phone would)."""

import json
from dataclasses import dataclass, field
from itertools import count

from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.models import Device, User
from chatserver.models import OutboxEvent

PASSWORD = "correct horse battery staple"
_names = count(1)


@dataclass
class TestUser:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    id: int
    username: str
    token: str
    device: Device
    client: APIClient = field(repr=False)

    @property
    def mqtt(self) -> dict:
        return {
            "username": self.device.mqtt_username,
            "password": self.device.mqtt_password,
            "client_id": self.device.mqtt_client_id,
        }


def authed_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


def make_user(username: str | None = None) -> TestUser:
    username = username or f"user{next(_names)}"
    device, token = account_services.user_signup(username=username, password=PASSWORD)
    return TestUser(device.user_id, username, token, device, authed_client(token))


def login(user: TestUser) -> TestUser:
    """Another device of the same user."""
    device, token = account_services.user_login(username=user.username, password=PASSWORD)
    return TestUser(user.id, user.username, token, device, authed_client(token))


def make_actor(username: str | None = None) -> User:
    """A user, as services take the acting one (for the service tier)."""
    return User.objects.get(id=make_user(username).id)


def group_chat(owner: TestUser, *members: TestUser, name: str = "g") -> int:
    """A group of `owner` and `members`, created over the API (201 asserted); its id."""
    response = owner.client.post("/chats/", {"members": [m.id for m in members], "name": name}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["id"]


def send_message(user: TestUser, cid: int, content: str = "hello", **extra) -> dict:
    """A message `user` sends to chat `cid` over the API (201 asserted); its JSON."""
    response = user.client.post(f"/chats/{cid}/messages/", {"content": content, **extra}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def queued_events() -> list[tuple[OutboxEvent, dict]]:
    """The outbox's event rows, oldest first, each with its payload read."""
    return [(row, json.loads(row.payload)) for row in OutboxEvent.objects.order_by("id") if row.payload]
