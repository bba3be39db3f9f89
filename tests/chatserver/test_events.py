"""Events and access operations check themselves when made; the outbox refuses the rest."""

import dataclasses

import pytest
from django.db import transaction

from chatserver import outbox
from chatserver.broker_access import (
    ACCESS_OPS,
    ChatAdd,
    DeviceAdd,
    DeviceRemove,
    MemberGrant,
    MemberRevoke,
    UserAdd,
    ChatRemove,
    access_op_from_json,
)
from chatserver.events import Event, EventType
from chatserver.models import OutboxEvent

EXAMPLES = [
    UserAdd(user=5),
    DeviceAdd(user=5, username="device-9", password="secret", client_id="chat-5-9"),
    DeviceRemove(user=5, username="device-9", client_id="chat-5-9"),
    ChatAdd(chat=7),
    MemberGrant(chat=7, user=5),
    MemberRevoke(chat=7, user=5),
    ChatRemove(chat=7),
]


def test_every_access_operation_round_trips_through_its_stored_form():
    assert {type(op) for op in EXAMPLES} == set(ACCESS_OPS.values())
    for op in EXAMPLES:
        assert access_op_from_json(op.to_json()) == op


def test_a_device_password_is_not_in_its_repr():
    assert "secret" not in repr(EXAMPLES[1])


@pytest.mark.parametrize("make", [
    lambda: UserAdd(user=0),
    lambda: UserAdd(user="5"),
    lambda: MemberGrant(chat=True, user=5),
    lambda: DeviceAdd(user=5, username="", password="p", client_id="c"),
    lambda: DeviceRemove(user=5, username="u", client_id="a/#"),
])
def test_access_operations_refuse_bad_fields_when_made(make):
    with pytest.raises(ValueError):
        make()


def test_access_operations_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        EXAMPLES[0].user = 6


@pytest.mark.parametrize("kwargs", [
    {"type": "message.created", "data": {}, "chat": 1},  # a string, not an EventType
    {"type": EventType.MESSAGE_CREATED, "data": {}},  # a chat event without its chat
    {"type": EventType.FRIEND_REMOVED, "data": {}, "chat": 1},  # a user event with one
    {"type": EventType.MESSAGE_CREATED, "data": [], "chat": 1},
    {"type": EventType.MESSAGE_CREATED, "data": {}, "chat": 1, "version": 0},
    {"type": EventType.PRESENCE_UPDATED, "data": {}, "version": 3},
])
def test_events_refuse_a_wrong_shape_when_made(kwargs):
    with pytest.raises(ValueError):
        Event(**kwargs)


def test_an_event_encodes_its_envelope():
    event = Event(type=EventType.CHAT_DELETED, data={"id": 3}, chat=3, version=4)
    assert event.as_dict() == {"type": "chat.deleted", "chat": 3, "version": 4, "data": {"id": 3}, "ts": event.ts}


@pytest.mark.django_db
@pytest.mark.parametrize("kwargs", [
    {"access": [{"op": "user_add", "user": 5}]},  # a dict, not an AccessOp
    {"event": Event(type=EventType.FRIEND_REMOVED, data={})},  # nobody to tell
    {"event": Event(type=EventType.FRIEND_REMOVED, data={}), "user_ids": ["5"]},
    {"event": Event(type=EventType.CHAT_DELETED, data={"id": 3}, chat=3), "chat_topic": 4},
    {"user_ids": [5]},  # recipients of nothing
    {"event": Event(type=EventType.PRESENCE_PROBE, data={}), "user_ids": [5]},  # ephemeral: never queued
    {},
])
def test_the_outbox_refuses_what_the_relay_could_not_handle(kwargs):
    with transaction.atomic():
        with pytest.raises(outbox.InvalidOutboxRow):
            outbox.enqueue(**kwargs)
        assert OutboxEvent.objects.count() == 0
