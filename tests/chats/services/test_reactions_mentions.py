"""Reactions and mentions, called directly (service tier; also run on SQLite)."""

import pytest

from accounts.errors import BlockedError
from accounts.social import block_add
from chats.models import Mention, Message, Reaction
from chats.services.chats import chat_create
from chats.services.message_edit import message_update
from chats.services.message_send import message_send
from chats.services.reactions import reaction_add, reaction_remove
from chats.services.typing import typing_update
from chatserver.events import EventType
from tests.support.factories import make_actor

pytestmark = pytest.mark.django_db


def test_a_sent_message_keeps_its_mentions_through_both_write_paths(group, outbox):
    chat, alice, bob, carol = group

    message, _ = message_send(actor=alice, chat_id=chat.id, content=f"@{bob.username} @{carol.username}")

    assert message.mentions == sorted([bob.id, carol.id])
    stored = Message.objects.get(id=message.id)
    assert (stored.mentions, stored.reactions) == (sorted([bob.id, carol.id]), [])
    assert sorted(Mention.objects.values_list("user_id", "seq")) == sorted([(bob.id, 1), (carol.id, 1)])
    (row,) = outbox.rows
    assert row.data["mentions"] == sorted([bob.id, carol.id]) and row.data["reactions"] == []


def test_a_reaction_queues_the_update_then_tells_the_author(group, outbox):
    chat, alice, bob, _ = group
    message, _ = message_send(actor=alice, chat_id=chat.id, content="hi")
    outbox.clear()

    updated = reaction_add(actor=bob, chat_id=chat.id, message_id=message.id, emoji="🔥")

    assert updated.reactions == [{"emoji": "🔥", "count": 1, "user_ids": [bob.id]}]
    assert [row.type for row in outbox.rows] == [EventType.MESSAGE_UPDATED, EventType.REACTION_ADDED]
    assert outbox.rows[1].user_ids == [alice.id]
    reaction_remove(actor=bob, chat_id=chat.id, message_id=message.id, emoji="🔥")
    assert Reaction.objects.count() == 0
    assert Message.objects.get(id=message.id).reactions == []


def test_an_edit_replaces_the_mention_rows(group):
    chat, alice, bob, carol = group
    message, _ = message_send(actor=alice, chat_id=chat.id, content=f"@{bob.username}")

    message_update(chat_id=chat.id, actor=alice, message_id=message.id, content=f"@{carol.username}")

    assert list(Mention.objects.values_list("user_id", flat=True)) == [carol.id]
    assert Message.objects.get(id=message.id).mentions == [carol.id]


def test_a_blocked_pair_can_neither_react_nor_type_in_their_direct_chat(outbox):
    alice, bob = make_actor(), make_actor()
    chat, _ = chat_create(actor=alice, member_ids=[bob.id])
    message, _ = message_send(actor=alice, chat_id=chat.id, content="hi")
    block_add(actor=alice, target_id=bob.id)
    outbox.clear()

    with pytest.raises(BlockedError):
        reaction_add(actor=bob, chat_id=chat.id, message_id=message.id, emoji="👍")
    with pytest.raises(BlockedError):
        typing_update(actor=bob, chat_id=chat.id, typing=True)
    assert Reaction.objects.count() == 0 and outbox.rows == []
