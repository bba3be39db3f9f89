"""The send, called directly: what it writes and what it queues (service tier)."""

import json

import pytest
from rest_framework.utils.encoders import JSONEncoder

from accounts.errors import BlockedError, TokenRevoked
from accounts.models import Device, User
from accounts.social import block_add
from chats import shapes
from chats.errors import CannotPost, ChatNotFound
from chats.models import Membership, Message
from chats.services.chats import chat_create
from chats.services.message_send import message_send
from chatserver.errors import InvalidInput
from chatserver.events import EventType
from tests.support.factories import make_actor

pytestmark = pytest.mark.django_db


def test_a_message_is_queued_once_to_every_member_and_the_chat_topic(group, outbox):
    # given
    chat, alice, bob, carol = group

    # when
    message, created = message_send(actor=alice, chat_id=chat.id, content="hi", client_id="k1")

    # then
    assert created is True
    assert (message.seq, message.version, message.unread_count) == (1, 2, 2)
    (row,) = outbox.rows
    assert (row.type, row.chat, row.version, row.chat_topic) == (EventType.MESSAGE_CREATED, chat.id, 2, chat.id)
    assert row.user_ids == sorted([alice.id, bob.id, carol.id])
    assert row.access == []
    # The event carries the very object the API answers with.
    assert row.data == json.loads(json.dumps(shapes.message_output(message), cls=JSONEncoder))


def test_a_retry_with_the_same_client_id_returns_the_first_and_queues_nothing(group, outbox):
    # given
    chat, alice, _, _ = group
    first, _ = message_send(actor=alice, chat_id=chat.id, content="hi", client_id="k1")
    outbox.clear()

    # when
    again, created = message_send(actor=alice, chat_id=chat.id, content="other", client_id="k1")

    # then
    assert (created, again.id, again.content) == (False, first.id, "hi")
    assert outbox.rows == []
    assert Message.objects.count() == 1


@pytest.mark.parametrize("who", ["restricted", "outsider"])
def test_refused_senders_write_and_queue_nothing(group, outbox, who):
    # given
    chat, alice, bob, _ = group
    if who == "restricted":
        Membership.objects.filter(chat=chat, user=bob).update(role="restricted")
        sender, error = bob, CannotPost
    else:
        sender, error = make_actor(), ChatNotFound
    outbox.clear()

    # when
    with pytest.raises(error):
        message_send(actor=sender, chat_id=chat.id, content="hi")

    # then
    assert outbox.rows == []
    assert Message.objects.count() == 0


def test_a_signed_out_devices_send_is_refused_by_the_write_and_writes_nothing(group, outbox):
    # given: alice's device sends, then is signed out (as by logout in another process,
    # whose token cache this one does not see)
    chat, alice, _, _ = group
    device = Device.objects.get(user=alice)
    message_send(actor=alice, chat_id=chat.id, content="before", client_id="k1", device=device)
    outbox.clear()
    Device.objects.filter(id=device.id).delete()

    # when / then: refused, a new message and a retry of the first alike
    for client_id in ("k2", "k1"):
        with pytest.raises(TokenRevoked) as refused:
            message_send(actor=alice, chat_id=chat.id, content="after", client_id=client_id, device=device)
        assert refused.value.message == "Invalid or revoked token."
    assert outbox.rows == []
    assert list(Message.objects.values_list("content", flat=True)) == ["before"]


def test_a_deactivated_users_device_is_refused_by_the_write_and_writes_nothing(group, outbox):
    # given: deactivated behind User.save's back, so the device row is still there
    chat, alice, _, _ = group
    device = Device.objects.get(user=alice)
    User.objects.filter(id=alice.id).update(is_active=False)

    # when
    with pytest.raises(TokenRevoked) as refused:
        message_send(actor=alice, chat_id=chat.id, content="hi", device=device)

    # then
    assert refused.value.message == "User inactive or deleted."
    assert outbox.rows == []
    assert Message.objects.count() == 0


def test_a_block_stops_both_sides_of_a_direct_chat(outbox):
    # given
    alice, bob = make_actor(), make_actor()
    direct, _ = chat_create(actor=alice, member_ids=[bob.id])
    block_add(actor=bob, target_id=alice.id)
    outbox.clear()

    # when / then
    for sender in (alice, bob):
        with pytest.raises(BlockedError):
            message_send(actor=sender, chat_id=direct.id, content="hi")
    assert outbox.rows == []


def test_a_reply_to_a_message_of_another_chat_is_invalid(group, outbox):
    # given
    chat, alice, bob, _ = group
    other, _ = chat_create(actor=alice, member_ids=[bob.id], name="other")
    elsewhere, _ = message_send(actor=alice, chat_id=other.id, content="there")
    outbox.clear()

    # when
    with pytest.raises(InvalidInput) as refused:
        message_send(actor=alice, chat_id=chat.id, content="re", reply_to_id=elsewhere.id)

    # then
    assert refused.value.fields == {"reply_to": ["No such message in this chat."]}
    assert outbox.rows == []
