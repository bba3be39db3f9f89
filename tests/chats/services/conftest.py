"""What the chats service tier's tests share."""

import pytest

from chats.services.chats import chat_create
from tests.support.factories import make_actor


@pytest.fixture
def group(outbox):
    """A group of alice (its owner), bob and carol, with nothing queued yet."""
    alice, bob, carol = make_actor(), make_actor(), make_actor()
    chat, _ = chat_create(actor=alice, member_ids=[bob.id, carol.id], name="g")
    outbox.clear()
    return chat, alice, bob, carol
