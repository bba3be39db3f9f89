"""The events the server publishes over MQTT: their types, in one place, and their envelope.

Every event is JSON `{type, chat?, version?, data, ts}` (docs/asyncapi.yaml has the schema
of each type's `data`). An `Event` checks its own shape when it is made, so a service that
builds a wrong one fails in the request that made it, not later in the relay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder


class EventType(StrEnum):
    # Chat events: about one chat, they carry its id (`chat`).
    MESSAGE_CREATED = "message.created"
    MESSAGE_UPDATED = "message.updated"
    CHAT_CREATED = "chat.created"
    CHAT_UPDATED = "chat.updated"
    CHAT_DELETED = "chat.deleted"
    MEMBER_ADDED = "member.added"
    MEMBER_REMOVED = "member.removed"
    MEMBER_UPDATED = "member.updated"
    READ_UPDATED = "read.updated"
    # Ephemeral (QoS 0, not through the outbox): a member is typing, or stopped.
    TYPING_UPDATED = "typing.updated"
    # User events: about a person, on user topics only.
    FRIEND_REQUESTED = "friend.requested"
    FRIEND_ACCEPTED = "friend.accepted"
    FRIEND_REMOVED = "friend.removed"
    PRESENCE_UPDATED = "presence.updated"
    # A person's profile changed (display name, avatar) or the account was deleted.
    USER_UPDATED = "user.updated"
    # One's own mute of a chat: to one's own devices only (nobody else may know).
    MUTE_UPDATED = "mute.updated"
    # Someone reacted to one's message: to the message's author only, a user event (the
    # reactions themselves reach every member as the chat event `message.updated`).
    REACTION_ADDED = "reaction.added"
    # Where one chat stands in one's own list (pinned, archived): to one's own devices only.
    CHAT_LIST_UPDATED = "chat_list.updated"
    # Ephemeral (QoS 0, not through the outbox): connected devices, repeat your presence.
    PRESENCE_PROBE = "presence.probe"

    @property
    def is_ephemeral(self) -> bool:
        """Published at QoS 0 by a worker directly, never queued (not through the outbox;
        `chatserver.ephemeral` carries the web's to the relay)."""
        return self in (EventType.PRESENCE_PROBE, EventType.TYPING_UPDATED)

    @property
    def is_chat_event(self) -> bool:
        return self.value.split(".")[0] in {"message", "chat", "member", "read", "typing"}


@dataclass(frozen=True)
class Event:
    """One event as published. `chat` is set exactly for chat events; `version` is the
    chat's change counter after this change, for the events that change it (which ones:
    `chats.services.common.UNVERSIONED`)."""

    type: EventType
    data: dict[str, Any]
    chat: int | None = None
    version: int | None = None
    ts: datetime = field(default_factory=timezone.now)

    def __post_init__(self) -> None:
        if not isinstance(self.type, EventType):
            raise ValueError(f"unknown event type {self.type!r}: name it in chatserver.events.EventType")
        if not isinstance(self.data, dict):
            raise ValueError(f"{self.type}: data must be a dict, got {type(self.data).__name__}")
        if self.type.is_chat_event != (self.chat is not None):
            raise ValueError(f"{self.type}: `chat` is required for chat events and only for them")
        if self.chat is not None and (isinstance(self.chat, bool) or not isinstance(self.chat, int)):
            raise ValueError(f"{self.type}: chat must be an id, got {self.chat!r}")
        if self.version is not None and (
            self.chat is None or isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1
        ):
            raise ValueError(f"{self.type}: version must be a positive int of a chat event, got {self.version!r}")

    def as_dict(self) -> dict[str, Any]:
        event: dict[str, Any] = {"type": self.type.value}
        if self.chat is not None:
            event["chat"] = self.chat
        if self.version is not None:
            event["version"] = self.version
        event["data"] = self.data
        event["ts"] = self.ts
        return event

    def encode(self) -> str:
        """The JSON published. DRF's encoder, so that a message in an event is byte for
        byte the object the HTTP API returns (same datetime format)."""
        return json.dumps(self.as_dict(), cls=JSONEncoder, separators=(",", ":"), ensure_ascii=False)


def check_against_contract(event: Event) -> None:
    """Validate `event` against docs/asyncapi.yaml when OUTBOX_CHECK_SCHEMAS is on (the
    test suite turns it on in every process), wherever it is about to be published:
    queued (`outbox.enqueue`) or sent directly (the presence worker's probe)."""
    from django.conf import settings

    if settings.OUTBOX_CHECK_SCHEMAS:
        from chatserver.contract import check_event  # jsonschema: only when asked for

        check_event(event)

